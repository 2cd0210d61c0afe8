"""Released pairs by name, and the `PairSpec` that names any pair (registry name, dirs or hub ids).

Extra pairs (a test's fixture pair, a private pair) join the shipped list without editing it: a YAML
file of the same shape named in ``$NLALAB_EXTRA_PAIRS`` (``os.pathsep``-separated), or
:func:`registered` for the duration of a ``with`` block.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional

import yaml
from pydantic import BaseModel

from nlalab.errors import NLALabError, UsageError

EXTRA_PAIRS_ENV = "NLALAB_EXTRA_PAIRS"


class RegisteredPair(BaseModel):
    name: str
    av: str
    ar: str
    target: str
    layer: int
    n_layers: int
    d_model: int
    target_gated: bool = False
    memory_gb: dict[str, float] = {}
    licence: str = ""
    # The training-set B_rv the release divides mse_nrm by (at mse_scale = sqrt(d_model)), and where it is
    # published; None for a pair whose training set is unknown.
    b_rv: Optional[float] = None
    b_rv_source: Optional[str] = None


class PairSpec(BaseModel):
    """Where the three models of a pair come from. Local dirs or hub ids; revisions pin hub downloads."""

    name: Optional[str] = None
    av: str
    ar: str
    target: Optional[str] = None
    layer: Optional[int] = None
    av_revision: Optional[str] = None
    ar_revision: Optional[str] = None
    target_revision: Optional[str] = None


def _parse(raw: dict, where: str) -> dict[str, RegisteredPair]:
    if not isinstance(raw, dict) or not isinstance(raw.get("pairs"), dict):
        raise UsageError(f"{where}: expected a mapping with a `pairs:` mapping (the shape of nlalab's registry.yaml).")
    out = {}
    for name, entry in raw["pairs"].items():
        try:
            out[name] = RegisteredPair(name=name, **entry)
        except Exception as e:  # pydantic's report is many lines: keep the first
            first = str(e).splitlines()
            raise UsageError(f"{where}: pair {name!r} is malformed ({first[1] if len(first) > 1 else e}).") from None
    return out


@lru_cache(maxsize=1)
def _shipped() -> dict[str, RegisteredPair]:
    return _parse(yaml.safe_load(resources.files("nlalab.pairs").joinpath("registry.yaml").read_text()),
                  "nlalab/pairs/registry.yaml")


@lru_cache(maxsize=8)
def _from_files(paths: str) -> dict[str, RegisteredPair]:
    out: dict[str, RegisteredPair] = {}
    for p in filter(None, paths.split(os.pathsep)):
        f = Path(p)
        if not f.is_file():
            raise UsageError(f"${EXTRA_PAIRS_ENV} names {f}, which does not exist. Fix: correct or unset it.")
        out.update(_parse(yaml.safe_load(f.read_text()), str(f)))
    return out


_EXTRA: dict[str, RegisteredPair] = {}


def registry() -> dict[str, RegisteredPair]:
    """Shipped pairs, then those of ``$NLALAB_EXTRA_PAIRS``, then :func:`registered` ones (later names win)."""
    reg = dict(_shipped())
    reg.update(_from_files(os.environ.get(EXTRA_PAIRS_ENV, "")))
    reg.update(_EXTRA)
    return reg


@contextmanager
def registered(name: str, **fields) -> Iterator[RegisteredPair]:
    """Register a pair for the duration of the block (tests: a fixture pair that behaves like a released one)."""
    entry = RegisteredPair(name=name, **fields)
    old = _EXTRA.get(name)
    _EXTRA[name] = entry
    try:
        yield entry
    finally:
        if old is None:
            _EXTRA.pop(name, None)
        else:
            _EXTRA[name] = old


def find_pair(name: Optional[str]) -> Optional[RegisteredPair]:
    """The registry entry named ``name``, or None (a pair given by dirs, or an unregistered name)."""
    return registry().get(name) if name else None


def get_pair(name: str) -> RegisteredPair:
    reg = registry()
    if name not in reg:
        raise NLALabError(
            f"Unknown pair {name!r}. Registered: {', '.join(reg)}. "
            "Fix: pick one (`nlalab ls`) or pass --av DIR --ar DIR --target DIR."
        )
    return reg[name]


def spec_from_args(
    pair: Optional[str] = None,
    av: Optional[str] = None,
    ar: Optional[str] = None,
    target: Optional[str] = None,
    layer: Optional[int] = None,
    revision: Optional[str] = None,
) -> PairSpec:
    """Merge a registry name with explicit overrides (explicit paths win)."""
    if pair:
        r = get_pair(pair)
        return PairSpec(
            name=pair, av=av or r.av, ar=ar or r.ar, target=target or r.target,
            layer=layer if layer is not None else r.layer,
            av_revision=revision, ar_revision=revision,
        )
    if not (av and ar):
        raise NLALabError("Name a pair: --pair NAME, or both --av and --ar (and --target to capture activations).")
    return PairSpec(av=av, ar=ar, target=target, layer=layer)
