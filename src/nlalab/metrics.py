"""Reconstruction metrics for NLA pairs: pure tensor functions, no model code.

Every function computes in float64 and returns float64 tensors (per-row metrics) or python floats
(dataset constants and set-level scores). Inputs may be torch tensors or numpy arrays of shape
``[..., d]`` (``[n, d]`` for reference sets). Norms are clamped at 1e-12 as in the kitft training
repo, so a zero vector normalises to the zero vector. kitft takes the norm in fp32; float64 here
differs from it only at the 1e-7 level.

Notation: ``s = mse_scale`` (kitft uses ``s = sqrt(d)``) and ``n(x) = x * s / ||x||``.

- ``cos``      = cosine(pred, gold).
- ``mse_nrm``  = ``mean_d (n(pred) - n(gold))^2`` (per row). With ``s = sqrt(d)`` this is
  ``2 (1 - cos)``: 0 perfect, 2 orthogonal, 4 opposite. It is the AR loss and ``-reward``.

There are two different "FVE"s with the name fve_nrm, and they differ only in the denominator:

- ``fve_nrm`` (training repo, the number kitft logs and the examples print):
  ``1 - mse_nrm / B_rv``. ``B_rv`` is a *dataset constant* computed once from a named reference set
  (kitft: the first <= 50k rows of the training parquet): normalise every row, take the mean ``mu``
  of the normalised rows (not renormalised), and ``B_rv = mean over rows and dims (n(v_i) - mu)^2``
  (population variance per dimension, averaged over dims). With ``s = sqrt(d)``,
  ``B_rv = 1 - ||mean_i v_i/||v_i||||^2``. Always report which reference set gave B_rv.
- ``fve_nrm_seed`` (the seed paper, section 2.3): ``1 - mse_nrm / var(n(gold))`` per vector, where the
  variance is taken over the d components of the *single* normalised gold vector (ddof=0). With
  ``s = sqrt(d)``, ``var(n(g)) = 1 - mean_d(n(g))^2``, so it is ~``2 cos - 1`` only when the
  components of n(gold) have zero mean (equivalently unit variance). It carries no information beyond
  cos and is NOT comparable to the training-repo fve_nrm.

Baselines and set-level scores:

- ``bmn`` = kitft's "meannorm" baseline ``B_mn = mean_i mean_d (n(v_i) - n(mu))^2``: the mse_nrm of
  the best constant prediction (the prediction is normalised by mse_nrm, so predicting ``mu`` or
  ``n(mu)`` is the same). With ``s = sqrt(d)``, ``B_mn = 2 (1 - mean_i cos(v_i, mu)) = 2 (1 - ||mu||)``
  for unit-row mean ``mu``; since ``B_rv = (1 - ||mu||)(1 + ||mu||)``, ``B_mn >= B_rv`` and
  predict-the-mean scores a mean fve_nrm of ``1 - B_mn / B_rv = -(1 - ||mu||)/(1 + ||mu||) <= 0``.
- ``raw_fve`` = classic explained variance over a set of raw (unnormalised) vectors:
  ``1 - sum ||p - g||^2 / sum ||g - mean(g)||^2`` with per-dimension means over the set. The
  denominator is variance about the dataset mean, not about zero (the SAELens bug, PRs #665/#710);
  predicting the dataset mean for every row gives exactly 0. It is magnitude-sensitive.
- ``centered_cos`` / ``centered_mse``: cos / mse_nrm after subtracting a fixed ``center`` (e.g. the
  dataset mean activation) from both sides, so a shared mean direction cannot inflate the score.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "normalize",
    "cos",
    "mse_nrm",
    "fve_nrm_seed",
    "brv",
    "fve_nrm",
    "bmn",
    "mean_direction",
    "centered_cos",
    "centered_mse",
    "raw_fve",
    "score_pairs",
]

_EPS = 1e-12


# ----------------------------------------------------------------------------- validation helpers


def _as64(x, name: str, *, min_ndim: int = 1) -> torch.Tensor:
    """Convert to a float64 tensor and refuse shapes/values that would give silent nonsense."""
    if isinstance(x, np.ndarray) and x.dtype == object:
        raise ValueError(f"{name}: found a numpy object array; expected a numeric array")
    try:
        t = torch.as_tensor(x)
    except Exception as exc:  # lists of ragged rows, strings, ...
        raise ValueError(f"{name}: cannot convert {type(x).__name__} to a tensor ({exc})") from exc
    if t.is_complex():
        raise ValueError(f"{name}: found complex dtype {t.dtype}; expected real values")
    t = t.to(torch.float64)
    if t.ndim < min_ndim:
        raise ValueError(
            f"{name}: found shape {tuple(t.shape)}; expected at least {min_ndim} dim(s) "
            f"({'[d]' if min_ndim == 1 else '[n, d]'})"
        )
    if t.shape[-1] < 2:
        raise ValueError(f"{name}: found shape {tuple(t.shape)}; expected last dim d >= 2")
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_bad = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise ValueError(
            f"{name}: found {n_bad} non-finite value(s) (NaN/Inf) in shape {tuple(t.shape)}, "
            f"first at index {first}"
        )
    return t


def _pair(pred, gold) -> tuple[torch.Tensor, torch.Tensor]:
    p = _as64(pred, "pred")
    g = _as64(gold, "gold")
    if p.shape != g.shape:
        raise ValueError(
            f"pred and gold must have the same shape; found pred {tuple(p.shape)} and gold {tuple(g.shape)}"
        )
    return p, g


def _check_scale(mse_scale, name: str = "mse_scale") -> float:
    try:
        s = float(mse_scale)
    except Exception as exc:
        raise ValueError(f"{name}: expected a positive finite number; found {mse_scale!r}") from exc
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"{name}: expected a positive finite number; found {s!r}")
    return s


def _ref(reference_vectors) -> torch.Tensor:
    r = _as64(reference_vectors, "reference_vectors", min_ndim=2)
    r = r.reshape(-1, r.shape[-1])
    if r.shape[0] < 1:
        raise ValueError(f"reference_vectors: found shape {tuple(r.shape)}; expected at least one row")
    return r


def _center(center, d: int) -> torch.Tensor:
    c = _as64(center, "center")
    if c.shape != (d,):
        raise ValueError(f"center: found shape {tuple(c.shape)}; expected [d] = [{d}]")
    return c


# ----------------------------------------------------------------------------- core (unchecked) math


def _n(x: torch.Tensor, s: float) -> torch.Tensor:
    return x * (s / x.norm(dim=-1, keepdim=True).clamp_min(_EPS))


def _cos(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return (_n(p, 1.0) * _n(g, 1.0)).sum(-1)


def _mse(p: torch.Tensor, g: torch.Tensor, s: float) -> torch.Tensor:
    return (_n(p, s) - _n(g, s)).pow(2).mean(-1)


def _fve_seed(p: torch.Tensor, g: torch.Tensor, s: float) -> torch.Tensor:
    ng = _n(g, s)
    var = ng.var(dim=-1, unbiased=False)
    mse = _mse(p, g, s)
    # A gold vector with equal components (or zero) has no per-vector variance: the ratio is undefined.
    tiny = 1e-12 * (s * s) / g.shape[-1]
    return torch.where(var > tiny, 1.0 - mse / var.clamp_min(tiny), torch.full_like(mse, float("nan")))


# ----------------------------------------------------------------------------- public API


def normalize(x, scale: float) -> torch.Tensor:
    """``x * scale / ||x||`` over the last dim (float64); zero rows stay zero (norm clamped at 1e-12)."""
    return _n(_as64(x, "x"), _check_scale(scale, "scale"))


def cos(pred, gold) -> torch.Tensor:
    """Per-row cosine (float64, shape ``[...]``); 0 if either side is the zero vector."""
    p, g = _pair(pred, gold)
    return _cos(p, g)


def mse_nrm(pred, gold, mse_scale: float) -> torch.Tensor:
    """Per-row ``mean_d (n(pred) - n(gold))^2`` (float64): kitft's AR loss; ``2(1-cos)`` at s=sqrt(d)."""
    p, g = _pair(pred, gold)
    return _mse(p, g, _check_scale(mse_scale))


def fve_nrm_seed(pred, gold, mse_scale: float) -> torch.Tensor:
    """Seed paper's per-vector FVE: ``1 - mse_nrm / var_d(n(gold))`` (float64, ddof=0).

    The denominator is the spread of one gold vector's components, not a dataset variance, so this
    is ~``2 cos - 1`` only if n(gold) has zero component mean. It is NOT the training-repo fve_nrm
    (see :func:`fve_nrm`). Rows whose gold has (numerically) zero component variance give NaN.
    """
    p, g = _pair(pred, gold)
    return _fve_seed(p, g, _check_scale(mse_scale))


def brv(reference_vectors, mse_scale: float) -> float:
    """kitft's dataset constant B_rv: mean over rows and dims of ``(n(v_i) - mu)^2``, mu = mean n(v_i).

    ``mu`` is not renormalised. With ``s = sqrt(d)`` this equals ``1 - ||mean_i v_i/||v_i||||^2``.
    Compute it once from a named reference set (kitft: <= 50k training rows) and report it.
    """
    r = _ref(reference_vectors)
    nv = _n(r, _check_scale(mse_scale))
    mu = nv.mean(0)
    return float((nv - mu).pow(2).mean())


def fve_nrm(pred, gold, mse_scale: float, b_rv: float) -> torch.Tensor:
    """Training-repo per-row ``1 - mse_nrm / B_rv`` (float64); B_rv comes from :func:`brv`.

    Linear in mse_nrm, so the mean over rows equals ``1 - mean(mse_nrm)/B_rv`` as kitft logs it.
    """
    try:
        b = float(b_rv)
    except Exception as exc:
        raise ValueError(f"b_rv: expected a positive finite number; found {b_rv!r}") from exc
    if not math.isfinite(b) or b <= 0:
        raise ValueError(
            f"b_rv: expected a positive finite number; found {b!r} "
            "(a reference set with a single direction has B_rv = 0 and cannot define fve_nrm)"
        )
    return 1.0 - mse_nrm(pred, gold, mse_scale) / b


def mean_direction(reference_vectors) -> torch.Tensor:
    """Mean of the unit-normalised rows, shape ``[d]`` (float64, not renormalised).

    This is the predict-the-mean prediction; mse_nrm renormalises it, so its length does not matter
    there, but ``1 - ||mean_direction||^2 = B_rv`` at s = sqrt(d).
    """
    return _n(_ref(reference_vectors), 1.0).mean(0)


def bmn(reference_vectors, mse_scale: float) -> float:
    """kitft's "meannorm" baseline ``B_mn = mean_i mean_d (n(v_i) - n(mu))^2``: the mse_nrm of
    predicting the mean direction for every row (the best constant prediction, since mse_nrm
    normalises the prediction). Equals ``2(1 - mean_i cos(v_i, mu))`` at s = sqrt(d); always >= B_rv.
    """
    r = _ref(reference_vectors)
    s = _check_scale(mse_scale)
    mu = _n(r, 1.0).mean(0)
    return float(_mse(mu.expand_as(r), r, s).mean())


def centered_cos(pred, gold, center) -> torch.Tensor:
    """Per-row ``cos(pred - center, gold - center)`` (float64): removes the shared mean direction."""
    p, g = _pair(pred, gold)
    c = _center(center, p.shape[-1])
    return _cos(p - c, g - c)


def centered_mse(pred, gold, center, mse_scale: float) -> torch.Tensor:
    """Per-row mse_nrm of ``pred - center`` vs ``gold - center`` (float64)."""
    p, g = _pair(pred, gold)
    c = _center(center, p.shape[-1])
    return _mse(p - c, g - c, _check_scale(mse_scale))


def raw_fve(pred, gold) -> float:
    """Classic set-level FVE on raw vectors: ``1 - sum||p-g||^2 / sum||g - mean(g)||^2``.

    The mean is per dimension over all gold rows (variance about the dataset mean, not about zero),
    so predicting the dataset mean scores exactly 0 and a perfect prediction 1. Needs >= 2 distinct
    gold rows.
    """
    p, g = _pair(pred, gold)
    p = p.reshape(-1, p.shape[-1])
    g = g.reshape(-1, g.shape[-1])
    den = (g - g.mean(0)).pow(2).sum()
    if not float(den) > 0:
        raise ValueError(
            f"gold: found {g.shape[0]} row(s) with zero total variance about their mean; "
            "raw_fve needs at least two distinct gold rows"
        )
    return float(1.0 - (p - g).pow(2).sum() / den)


def score_pairs(pred, gold, mse_scale: float, b_rv: float | None = None, center=None) -> dict[str, torch.Tensor]:
    """All per-row metrics in one call (float64 tensors of shape ``[...]``).

    Keys: ``cos``, ``mse_nrm``, ``fve_nrm_seed``; ``fve_nrm`` only if ``b_rv`` is given (it needs a
    named reference set); ``centered_cos`` and ``centered_mse_nrm`` only if ``center`` is given.
    """
    p, g = _pair(pred, gold)
    s = _check_scale(mse_scale)
    m = _mse(p, g, s)
    out = {"cos": _cos(p, g), "mse_nrm": m, "fve_nrm_seed": _fve_seed(p, g, s)}
    if b_rv is not None:
        out["fve_nrm"] = fve_nrm(p, g, s, b_rv)
    if center is not None:
        c = _center(center, p.shape[-1])
        out["centered_cos"] = _cos(p - c, g - c)
        out["centered_mse_nrm"] = _mse(p - c, g - c, s)
    return out
