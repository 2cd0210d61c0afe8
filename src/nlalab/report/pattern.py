"""Calibrated cross-category and cross-run verdicts: the spread of category means and trajectory patterns.

Pure numpy; no run directories. :mod:`nlalab.report.compare` calls these. The spread test itself lives in
:mod:`nlalab.stats` (the study's analysis needs it, and study may not import report); it is re-exported here.

**Spread** (max − min of the category means). Its plain bootstrap interval is biased upward: with
equal true means the observed spread is always > 0 and the resampled spreads are larger still, so
the interval almost never contains 0 and cannot support "uniform across categories". Here:

- the *test* is a permutation test: category labels are shuffled over items (category sizes kept;
  an item's K samples move together), and ``p = (1 + #{null ≥ obs}) / (1 + n_perm)``;
- the *point* also comes bias-corrected: ``estimate_bc = max(0, obs − (mean(boot) − obs))`` with the
  stratified cluster bootstrap (items resampled inside each category);
- the *interval* is simultaneous: every pairwise difference of category means gets a Bonferroni
  interval (Welch t over items, α / #pairs), and since the spread is the largest true
  pairwise difference, ``[max(0, max lower bound), max upper bound]`` covers it with probability
  ≥ 1 − α, including a true spread of 0 (the percentile interval of max − min never does).

**Pattern** of a row over runs v_1..v_m: a step between consecutive runs counts only when its
paired-Δ test rejects 0 after a **Holm** correction across the m − 1 steps of the row (family-wise
α = 0.05 per row). Steps without a p-value get one from their interval (normal approximation).
Labels: ``flat`` (no step counts), ``monotonic up/down``, ``saturating up/down`` (all steps but
the last count in one direction, the last does not), ``peak/dip at <run>`` (one change of direction),
``non-monotonic``.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Optional, Sequence

import numpy as np

from nlalab import stats as ST
from nlalab.stats import spread_from_rows, spread_test, t_quantile  # noqa: F401  (re-exported)

__all__ = ["spread_test", "spread_from_rows", "classify_steps", "step_from_estimates", "CORRECTION"]

CORRECTION = "Holm across the consecutive steps of a row (family-wise alpha per row)"
_Z975 = NormalDist().inv_cdf(0.975)


# ----------------------------------------------------------------------------- pattern


def step_from_estimates(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
    """Δ = b − a for two runs' independent estimates with 95% intervals (normal approximation).

    Used where no paired item-level data exist. Runs on the same items are positively correlated, so
    treating them as independent makes the step test conservative, never anti-conservative.
    """
    if not a or not b or any(x.get(k) is None for x in (a, b) for k in ("mean", "lo", "hi")):
        return None
    se = math.sqrt(((a["hi"] - a["lo"]) / (2 * _Z975)) ** 2 + ((b["hi"] - b["lo"]) / (2 * _Z975)) ** 2)
    d = float(b["mean"] - a["mean"])
    p = 1.0 if se == 0 and d == 0 else (0.0 if se == 0 else 2 * (1 - NormalDist().cdf(abs(d) / se)))
    return {"mean": d, "lo": d - _Z975 * se, "hi": d + _Z975 * se, "p": p,
            "method": "unpaired normal approximation from the two runs' intervals"}


def _step_p(step: Optional[dict]) -> Optional[float]:
    if not step or step.get("mean") is None:
        return None
    if step.get("p") is not None:
        return float(step["p"])
    lo, hi = step.get("lo"), step.get("hi")
    if lo is None or hi is None:
        return None
    se = (hi - lo) / (2 * _Z975)
    if se <= 0:
        return 0.0 if step["mean"] != 0 else 1.0
    return 2 * (1 - NormalDist().cdf(abs(step["mean"]) / se))


def trivial_pattern(values, names: list[str]) -> Optional[dict]:
    """``n/a`` when a run lacks the value, ``single run`` with one run; None otherwise."""
    if any(v is None or not math.isfinite(float(v)) for v in values):
        miss = [names[i] for i, v in enumerate(values) if v is None or not math.isfinite(float(v))]
        return {"kind": "na", "text": f"n/a (missing in {', '.join(miss)})", "at": None}
    if len(values) < 2:
        return {"kind": "single", "text": "single run", "at": None}
    return None


def classify_steps(values: Sequence[Optional[float]], steps: Sequence[Optional[dict]],
                   names: Optional[Sequence[str]] = None, alpha: float = 0.05) -> dict:
    """Pattern of a trajectory from its tested steps (see the module docstring).

    ``steps[i]`` is the Δ from run i to run i+1 (``mean`` and ``p``, or ``mean``/``lo``/``hi``).
    Returns ``{"kind", "text", "at", "steps": [{"mean", "p", "p_holm", "counts"}], "correction"}``.
    """
    names = list(names) if names is not None else [f"run {i + 1}" for i in range(len(values))]
    trivial = trivial_pattern(values, names)
    if trivial is not None:
        return trivial
    v = [float(x) for x in values]
    m = len(v)
    if len(steps) != m - 1:
        raise ValueError(f"steps: expected {m - 1} steps for {m} runs; found {len(steps)}")
    ps = [_step_p(s) for s in steps]
    if any(p is None for p in ps):
        return {"kind": "na", "text": "n/a (no interval for a step)", "at": None, "correction": CORRECTION}
    adj = ST.holm(ps)
    sig = [a <= alpha for a in adj]
    s = [(1 if steps[i]["mean"] > 0 else -1) if sig[i] else 0 for i in range(m - 1)]
    info = [{"mean": float(steps[i]["mean"]), "p": ps[i], "p_holm": adj[i], "counts": bool(sig[i])}
            for i in range(m - 1)]
    base = {"steps": info, "correction": CORRECTION, "alpha": alpha}
    n_sig = sum(sig)
    tag = f"{n_sig} of {m - 1} step(s) significant, Holm"
    if n_sig == 0:
        return {**base, "kind": "flat", "text": f"flat (no step significant, Holm α={alpha:g})", "at": None}
    if m >= 3 and s[0] != 0 and all(x == s[0] for x in s[:-1]) and s[-1] == 0:
        word = "up" if s[0] > 0 else "down"
        return {**base, "kind": f"saturating_{word}", "text": f"saturating {word} ({tag})", "at": None}
    nz = [x for x in s if x != 0]
    if all(x > 0 for x in nz):
        return {**base, "kind": "monotonic_up", "text": f"monotonic up ({tag})", "at": None}
    if all(x < 0 for x in nz):
        return {**base, "kind": "monotonic_down", "text": f"monotonic down ({tag})", "at": None}
    changes = sum(1 for a, b in zip(nz, nz[1:]) if a != b)
    imax, imin = int(np.argmax(v)), int(np.argmin(v))
    if changes == 1 and nz[0] > 0:
        return {**base, "kind": "peak", "text": f"peak at {names[imax]} ({tag})", "at": imax}
    if changes == 1 and nz[0] < 0:
        return {**base, "kind": "dip", "text": f"dip at {names[imin]} ({tag})", "at": imin}
    return {**base, "kind": "non_monotonic",
            "text": f"non-monotonic (max at {names[imax]}, min at {names[imin]}; {tag})", "at": None}
