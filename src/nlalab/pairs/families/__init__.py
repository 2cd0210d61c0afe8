"""Per-family model knowledge in one place, one module per family (``llama``, ``qwen2``, ``gemma3``).

``pairs.arch`` (embedding scale), the fast engine (which model types it runs, Gemma's RMSNorm and extra
norms) and the test fixtures read these facts here instead of keeping their own lists of type names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # transformers ``model_type`` values of the decoder (text config)
    fast_engine: tuple[str, ...]  # of those, the ones the fast engine re-implements
    embed_scaled: bool  # embeddings multiplied by sqrt(hidden) inside the embedding module
    norm_one_plus_w: bool  # RMSNorm scales by (1 + w) in fp32 (Gemma) rather than w in the model dtype
    sandwich_norms: bool  # extra post-attention / pre- and post-feed-forward norms per layer
    qk_norm: bool  # RMSNorm on queries and keys per head
    fixture_arches: tuple[str, ...]  # names of its tiny fixtures in ``nlalab.testing``


def _all() -> tuple[Family, ...]:
    from nlalab.pairs.families import gemma3, llama, qwen2

    return (llama.FAMILY, qwen2.FAMILY, gemma3.FAMILY)


def families() -> tuple[Family, ...]:
    return _all()


def family_of(model_type: str) -> Optional[Family]:
    return next((f for f in _all() if model_type in f.model_types), None)


def fast_engine_types() -> tuple[str, ...]:
    return tuple(t for f in _all() for t in f.fast_engine)


def embed_scaled_types() -> set[str]:
    return {t for f in _all() if f.embed_scaled for t in f.model_types}
