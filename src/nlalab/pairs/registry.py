"""Released pairs by name, and the `PairSpec` that names any pair (registry name, dirs or hub ids)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Optional

import yaml
from pydantic import BaseModel

from nlalab.errors import NLALabError


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


@lru_cache(maxsize=1)
def registry() -> dict[str, RegisteredPair]:
    raw = yaml.safe_load(resources.files("nlalab.pairs").joinpath("registry.yaml").read_text())
    return {name: RegisteredPair(name=name, **entry) for name, entry in raw["pairs"].items()}


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
