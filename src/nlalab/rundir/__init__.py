"""The run directory: nlalab's contract between the study and everything after it.

``layout`` names the files, ``io`` writes and reads them safely (atomic files, torn-tail-safe JSONL,
one lock), ``schema`` types them (pydantic, with ``schema_version``), ``load`` returns a typed run.
report/, scorers/ and compare read runs only through this package.
"""

from __future__ import annotations

from nlalab.lazy import lazy_getattr

# Loaded on first use: writers import nlalab.rundir.io often and need neither pydantic models nor the loader.
_EXPORTS = {
    "SCHEMA_VERSION": "schema", "CONTROL_SECTIONS": "schema", "FILE_MODELS": "schema", "ConfigRecord": "schema",
    "Results": "schema", "SampleRow": "schema", "ControlRow": "schema", "ScoreRow": "schema",
    "Estimate": "schema",
    "Run": "load", "load_run": "load", "load_runs": "load", "migrate": "load", "item_means": "load",
    "field_reference": "reference", "key_paths": "reference",
    "RunLayout": "layout",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr('nlalab.rundir', _EXPORTS)
