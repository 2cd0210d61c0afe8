"""Which B_rv divides mse_nrm in fve_nrm, and where it came from.

The released pairs' published fve_nrm (0.70-0.82) divides by a *training-set* constant per pair (the
release's worked examples and ``nla_inference.py``), not by the variance of whatever a user happens to
capture. A run's own B_rv can be far off (a few chat-last-token prompts vary much less than web text),
so the two are always reported side by side, each with its source; ``--brv`` picks the denominator:

- ``registry`` (default when the pair has a training-set constant): the registry's value;
- ``own``: the variance of this run's own activations (the only choice for an unregistered pair);
- a number: that value;
- a vector FILE (.npy/.pt/.safetensors): B_rv of its rows (e.g. your own training vectors).

B_rv depends on ``mse_scale``: ``B_rv(s) = s^2/d * B_rv(sqrt d)``. Registry constants are at
``s = sqrt(d)``; an AR whose mse_scale differs gets the constant rescaled, and the source says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

from nlalab import metrics
from nlalab.errors import UsageError

CHOICES = ("registry", "own")
LOW_VARIANCE_BRV = 0.1  # the release flags Gemma's 0.030 / 0.058 as low-variance layers, not Qwen's 0.73


@dataclass(frozen=True)
class TrainingBrv:
    value: float
    source: str
    d_model: Optional[int] = None  # the constant is at mse_scale = sqrt(d_model) when known


@dataclass(frozen=True)
class BrvChoice:
    """``value``/``source``: the denominator used; ``own_value``/``own_source``: this run's B_rv, always
    computed when there are >= 2 activations (None otherwise, with the reason in ``own_source``);
    ``training_value``/``training_source``: the pair's training-set constant when one is known."""

    value: float
    source: str
    choice: str
    own_value: Optional[float]
    own_source: str
    training_value: Optional[float] = None
    training_source: Optional[str] = None

    @property
    def low_variance(self) -> bool:
        return self.value < LOW_VARIANCE_BRV

    def to_dict(self) -> dict:
        return {**asdict(self), "low_variance": self.low_variance}


def _positive(x: float, what: str) -> float:
    if not (math.isfinite(x) and x > 0):
        raise UsageError(f"{what} is {x!r}; B_rv must be a positive finite number. Fix: pass --brv with a value > 0.")
    return float(x)


def training_brv(entry: Any) -> Optional[TrainingBrv]:
    """The training-set B_rv of a registry entry (``RegisteredPair``), a registered or shipped pair name,
    or an already-built :class:`TrainingBrv`; None when none is known."""
    if entry is None or isinstance(entry, TrainingBrv):
        return entry
    if isinstance(entry, str):
        from nlalab.pairs.registry import find_pair

        found = find_pair(entry)
        if found is not None:
            return training_brv(found)
        return _shipped_brv(entry)
    value = getattr(entry, "b_rv", None)
    if value is None:
        return None
    src = getattr(entry, "b_rv_source", None) or "the registry"
    return TrainingBrv(float(value), f"training set of {getattr(entry, 'name', 'the pair')}: {src}",
                       getattr(entry, "d_model", None))


def _shipped_brv(name: str) -> Optional[TrainingBrv]:
    """nlalab's own shipped pair: the B_rv recorded from its training split when it was trained."""
    from nlalab.pairs import shipped

    base = name.split(" (")[0]  # the offline default's spec is named "<shipped> (nlalab-trained)"
    if base not in shipped.SHIPPED or not name.startswith(base) or "untrained" in name:
        return None
    info = shipped.pack_info(base)
    b = (info.get("eval") or {}).get("b_rv") or {}
    if "all" not in b:
        return None
    ref = info["eval"].get("b_rv_reference", "its training split")
    return TrainingBrv(float(b["all"]), f"training set of shipped pair {base}: {ref} (eval.json)")


def own_brv(own_acts, mse_scale: float, label: str = "this run's") -> tuple[Optional[float], str]:
    if own_acts is None:
        return None, "none (no activations given)"
    n = int(own_acts.shape[0]) if getattr(own_acts, "ndim", 1) > 1 else 1
    if n < 2:
        return None, f"none ({label} {n} activation: a B_rv needs at least 2)"
    value = metrics.brv(own_acts, mse_scale)
    return value, f"{label} {n} activations"


def _rescaled(t: TrainingBrv, mse_scale: float) -> tuple[float, str]:
    if t.d_model is None:
        return t.value, t.source
    factor = mse_scale ** 2 / t.d_model
    if abs(factor - 1.0) < 1e-6:
        return t.value, t.source
    return t.value * factor, f"{t.source}, rescaled by mse_scale^2/d = {factor:.6g} (the AR's mse_scale is not sqrt(d))"


def resolve_brv(choice: Union[str, float, int, None], registry_entry: Any, own_acts, mse_scale: float,
                own_label: str = "this run's") -> BrvChoice:
    """The B_rv that divides mse_nrm, and both candidates named with their source.

    ``choice``: None (registry if the pair has a training-set constant, else own), ``"registry"``,
    ``"own"``, a number (or numeric string), or a path to a vector file. ``registry_entry``: a
    ``RegisteredPair``, a pair name, a :class:`TrainingBrv`, or None.
    """
    mse_scale = float(mse_scale)
    own_value, own_source = own_brv(own_acts, mse_scale, own_label)
    train = training_brv(registry_entry)
    t_value, t_source = _rescaled(train, mse_scale) if train else (None, None)
    common = dict(own_value=own_value, own_source=own_source, training_value=t_value, training_source=t_source)

    if choice is None:
        choice = "registry" if train is not None else "own"
    if isinstance(choice, bool):
        raise UsageError(f"--brv {choice!r} is not a B_rv. Fix: pass registry, own, a number or a vector file.")
    if isinstance(choice, (int, float)):
        v = _positive(float(choice), "--brv")
        return BrvChoice(v, f"given (--brv {choice!r})", "number", **common)
    text = str(choice).strip()
    if text == "registry":
        if train is None:
            name = getattr(registry_entry, "name", registry_entry) or "this pair"
            raise UsageError(f"--brv registry: {name} has no training-set B_rv in the registry. "
                             "Fix: pass --brv own, a number, or a vector file of its training activations.")
        return BrvChoice(_positive(t_value, "the registry's B_rv"), t_source, "registry", **common)
    if text == "own":
        if own_value is None:
            raise UsageError(f"--brv own: {own_source}. Fix: capture more items, or pass --brv NUMBER|FILE.")
        return BrvChoice(_positive(own_value, f"B_rv of {own_source}"), own_source, "own", **common)
    try:
        v = float(text)
    except ValueError:
        v = None
    if v is not None:
        return BrvChoice(_positive(v, "--brv"), f"given (--brv {text})", "number", **common)
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"--brv {text!r} is neither registry, own, a number, nor an existing vector file. "
                         "Fix: pass one of those.")
    from nlalab.vectors_io import load_vectors

    ref = load_vectors(path)
    d_own = int(own_acts.shape[-1]) if own_acts is not None else None
    if d_own is not None and ref.shape[-1] != d_own:
        raise UsageError(f"--brv {path}: vectors of width {ref.shape[-1]}, but the activations have d = {d_own}. "
                         "Fix: pass vectors from the same model and layer.")
    if ref.shape[0] < 2:
        raise UsageError(f"--brv {path}: {ref.shape[0]} row; a B_rv needs at least 2 vectors. Fix: pass a larger set.")
    value = metrics.brv(ref, mse_scale)
    return BrvChoice(_positive(value, f"B_rv of {path}"), f"vector file {path} ({ref.shape[0]} rows)", "file", **common)
