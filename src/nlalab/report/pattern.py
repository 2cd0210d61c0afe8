"""Calibrated cross-category and cross-run verdicts: the spread of category means and trajectory patterns.

Pure numpy; no run directories. :mod:`nlalab.report.compare` and :mod:`nlalab.study.analysis` call these.

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

__all__ = ["spread_test", "spread_from_rows", "classify_steps", "step_from_estimates", "CORRECTION"]

CORRECTION = "Holm across the consecutive steps of a row (family-wise alpha per row)"
_Z975 = NormalDist().inv_cdf(0.975)


# ----------------------------------------------------------------------------- spread


def t_quantile(q: float, df: float) -> float:
    """Student-t quantile by the Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5); error < 1e-3 for
    df >= 5 at the tails used here, without a scipy dependency."""
    z = NormalDist().inv_cdf(q)
    if not math.isfinite(df) or df > 1e6:
        return z
    v = float(df)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3)
            + (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / (92160 * v ** 4))


def _spread_of(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    means = sums / counts
    return means.max(-1) - means.min(-1)


def spread_test(item_sums: dict, item_counts: dict, n_perm: int = 1000, n_boot: int = 2000, seed: int = 0,
                alpha: float = 0.05, metric: str = "value") -> Optional[dict]:
    """Spread of row-weighted category means with a permutation p, bias-corrected interval and verdict.

    ``item_sums[c]`` / ``item_counts[c]``: per item of category c, the sum of its rows' values and how many
    rows. Returns None when fewer than two categories have items (a spread needs two means).
    """
    cats = [c for c in item_sums if len(item_sums[c]) > 0]
    if len(cats) < 2:
        return None
    sums = [np.asarray(item_sums[c], dtype=np.float64) for c in cats]
    cnts = [np.asarray(item_counts[c], dtype=np.float64) for c in cats]
    obs = float(_spread_of(np.array([s.sum() for s in sums]), np.array([n.sum() for n in cnts])))
    rng = np.random.default_rng(seed)
    # bootstrap inside each category (items as clusters)
    bs = np.empty((int(n_boot), len(cats)))
    bc = np.empty((int(n_boot), len(cats)))
    for k, (s, n) in enumerate(zip(sums, cnts)):
        g = s.size
        w = np.zeros((int(n_boot), g))
        draws = rng.integers(0, g, size=(int(n_boot), g))
        np.add.at(w, (np.repeat(np.arange(int(n_boot)), g), draws.ravel()), 1.0)
        bs[:, k], bc[:, k] = w @ s, w @ n
    boot = _spread_of(bs, bc)
    bias = float(boot.mean() - obs)
    # Simultaneous (Bonferroni) intervals for every pairwise difference of category means; the spread is the
    # largest true difference, so [max lower bound, max upper bound] covers it whenever all pairs cover.
    # Welch t intervals with the ratio-estimator standard error over items (a bootstrap SE with 12 items
    # is too small by sqrt((n-1)/n) and z too small for 11 df: together 88% instead of 95% coverage).
    means = np.array([s.sum() / n.sum() for s, n in zip(sums, cnts)])
    var = np.array([float((n ** 2 * (s / n - m) ** 2).sum() / n.sum() ** 2 * s.size / max(1, s.size - 1))
                    for s, n, m in zip(sums, cnts, means)])
    gs = np.array([s.size for s in sums], dtype=np.float64)
    n_pairs = len(cats) * (len(cats) - 1) // 2
    lo, hi = 0.0, 0.0
    for a in range(len(cats)):
        for b in range(len(cats)):
            if a == b:
                continue
            v = var[a] + var[b]
            df = v ** 2 / sum(x ** 2 / max(1.0, g - 1) for x, g in ((var[a], gs[a]), (var[b], gs[b]))) if v > 0 else 1e9
            t = t_quantile(1 - alpha / (2 * n_pairs), df)
            d = float(means[a] - means[b])
            lo, hi = max(lo, d - t * math.sqrt(v)), max(hi, d + t * math.sqrt(v))
    # permutation: shuffle category labels over items
    all_s, all_n = np.concatenate(sums), np.concatenate(cnts)
    codes = np.concatenate([np.full(s.size, k) for k, s in enumerate(sums)])
    perm_null = np.empty(int(n_perm))
    for start in range(0, int(n_perm), 500):
        b = min(500, int(n_perm) - start)
        P = np.argsort(rng.random((b, codes.size)), axis=1)
        lab = codes[P]  # label given to item j in each permutation
        onehot = (lab[:, :, None] == np.arange(len(cats))[None, None, :]).astype(np.float64)
        ps = np.einsum("bjk,j->bk", onehot, all_s)
        pn = np.einsum("bjk,j->bk", onehot, all_n)
        perm_null[start:start + b] = _spread_of(ps, pn)
    p = ST.permutation_pvalue(obs, perm_null, alternative="greater")
    # minimum detectable difference between two categories (pooled within-category sd of item means)
    ss, dof = 0.0, 0
    for s, n in zip(sums, cnts):
        if s.size >= 2:
            m = s / n
            ss += float(np.var(m, ddof=1)) * (s.size - 1)
            dof += s.size - 1
    n_min = min(s.size for s in sums)
    mdd = ST.min_detectable_difference(math.sqrt(ss / dof), n_min) if dof and n_min >= 1 else None
    res = {"mean": obs, "lo": lo, "hi": hi, "n": int(all_n.sum()), "n_items": int(all_s.size),
           "n_categories": len(cats), "estimate_bc": max(0.0, obs - bias), "bias": bias, "p": p,
           "n_perm": int(n_perm), "null_mean": float(perm_null.mean()), "mdd": mdd, "alpha": alpha,
           "method": "permutation p (category labels shuffled over items); simultaneous interval from "
                     "Bonferroni-Welch intervals of the pairwise differences over items"}
    p_txt = ST.format_p(p, n_perm)
    if p <= alpha:
        res["verdict"] = (f"evidence that {metric} differs between categories (spread {obs:.3f} "
                          f"[{lo:.3f}, {hi:.3f}], {p_txt})")
    else:
        mdd_txt = f"minimum detectable difference {mdd:.3f}" if mdd is not None else "minimum detectable difference n/a"
        res["verdict"] = (f"no evidence that {metric} differs between categories at this n (spread {obs:.3f} "
                          f"[{lo:.3f}, {hi:.3f}], {p_txt}; {mdd_txt})")
    return res


def spread_from_rows(rows: Sequence[dict], metric: str, categories: Sequence[str], n_perm: int = 1000,
                     n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> Optional[dict]:
    """:func:`spread_test` from sample rows (``item_id``, ``category``, ``metric``); None/NaN values skipped."""
    sums: dict[str, dict[str, float]] = {c: {} for c in categories}
    cnts: dict[str, dict[str, int]] = {c: {} for c in categories}
    for r in rows:
        v = r.get(metric)
        if v is None or r.get("category") not in sums:
            continue
        v = float(v)
        if not math.isfinite(v):
            continue
        c, iid = r["category"], str(r["item_id"])
        sums[c][iid] = sums[c].get(iid, 0.0) + v
        cnts[c][iid] = cnts[c].get(iid, 0) + 1
    return spread_test({c: list(sums[c].values()) for c in categories},
                       {c: [cnts[c][i] for i in sums[c]] for c in categories},
                       n_perm=n_perm, n_boot=n_boot, seed=seed, alpha=alpha, metric=metric)


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


def classify_steps(values: Sequence[Optional[float]], steps: Sequence[Optional[dict]],
                   names: Optional[Sequence[str]] = None, alpha: float = 0.05) -> dict:
    """Pattern of a trajectory from its tested steps (see the module docstring).

    ``steps[i]`` is the Δ from run i to run i+1 (``mean`` and ``p``, or ``mean``/``lo``/``hi``).
    Returns ``{"kind", "text", "at", "steps": [{"mean", "p", "p_holm", "counts"}], "correction"}``.
    """
    names = list(names) if names is not None else [f"run {i + 1}" for i in range(len(values))]
    if any(v is None or not math.isfinite(float(v)) for v in values):
        miss = [names[i] for i, v in enumerate(values) if v is None or not math.isfinite(float(v))]
        return {"kind": "na", "text": f"n/a (missing in {', '.join(miss)})", "at": None}
    v = [float(x) for x in values]
    m = len(v)
    if m < 2:
        return {"kind": "single", "text": "single run", "at": None}
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
