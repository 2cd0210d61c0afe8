"""Uncertainty for NLA evaluations: bootstrap CIs, paired differences, permutation tests, power.

Everything takes an explicit ``seed`` (``numpy.random.default_rng(seed)``), so a report can be
regenerated bit for bit, and is vectorised (n ~ 150 items, 10k resamples in milliseconds).

Why the cluster bootstrap is the default whenever there are K > 1 samples per prompt: the K
explanations sampled for one activation share the prompt, the activation and the AV state, so
their scores are correlated. A row bootstrap treats 150 = 50 prompts x 3 samples as 150 independent
draws and understates the standard error by up to sqrt(K) (exactly sqrt(K) when the K samples are
identical). Resampling whole prompts (clusters) keeps the within-prompt correlation inside each
resample, so the interval reflects the number of independent prompts. Pass ``clusters=prompt_ids``.

Intervals are percentile intervals; the point estimate is the statistic on the full sample.

One module (~500 lines) because every estimator here (bootstraps, permutation tests, Holm, MDD, the spread
test) shares the same conventions for seeds, intervals and p-values, and each is a few dozen lines with its
known-answer test.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

__all__ = [
    "Estimate",
    "bootstrap_ci",
    "cluster_bootstrap_ci",
    "paired_bootstrap_diff",
    "permutation_test",
    "permutation_pvalue",
    "min_detectable_difference",
    "min_detectable_shift",
    "holm",
    "format_p",
    "binomial_tail",
    "weighted_bootstrap_ci",
    "random_derangements",
    "t_quantile",
    "spread_test",
    "spread_from_rows",
]

# Max elements of one resample matrix; bigger jobs are split into chunks to bound memory.
_CHUNK_ELEMS = 4_000_000


class Estimate(NamedTuple):
    """A point estimate with a percentile CI; ``p`` is set by tests, ``n_clusters`` by cluster methods."""

    mean: float
    lo: float
    hi: float
    n: int
    p: float | None = None
    n_clusters: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self._asdict().items()}


# ----------------------------------------------------------------------------- validation


def _values(x, name: str = "values") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array; found shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: is empty; need at least one value")
    if not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(a))
        raise ValueError(f"{name}: found {bad.size} non-finite value(s), first at index {int(bad[0])}")
    return a


def _check_common(n_boot: int, alpha: float) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot: expected >= 1; found {n_boot}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha: expected 0 < alpha < 1; found {alpha}")


def _cluster_codes(clusters, n: int) -> tuple[np.ndarray, int]:
    c = np.asarray(clusters)
    if c.ndim != 1 or c.shape[0] != n:
        raise ValueError(f"clusters: expected a 1-D label array of length {n}; found shape {c.shape}")
    _, codes = np.unique(c, return_inverse=True)
    codes = codes.reshape(-1)
    return codes, int(codes.max()) + 1


def _percentile(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- bootstrap engines


def _multiplicities(rng: np.random.Generator, n_rows: int, n_units: int) -> np.ndarray:
    """``[n_rows, n_units]`` counts of how often each unit was drawn (n_units draws with replacement)."""
    idx = rng.integers(0, n_units, size=(n_rows, n_units))
    flat = (idx + n_units * np.arange(n_rows)[:, None]).ravel()
    return np.bincount(flat, minlength=n_rows * n_units).reshape(n_rows, n_units).astype(np.float64)


def _boot_stat(a: np.ndarray, n_boot: int, rng: np.random.Generator, stat: Callable) -> np.ndarray:
    n = a.size
    out = np.empty(n_boot)
    step = max(1, _CHUNK_ELEMS // n)
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        if stat is np.mean:
            out[start : start + b] = _multiplicities(rng, b, n) @ a / n
            continue
        samples = a[rng.integers(0, n, size=(b, n))]
        try:
            res = np.asarray(stat(samples, axis=1), dtype=np.float64)
        except TypeError:
            res = None
        if res is None or res.shape != (b,):  # stat without axis support: one call per resample
            res = np.array([float(stat(row)) for row in samples])
        out[start : start + b] = res
    return out


def _boot_cluster_mean(a: np.ndarray, codes: np.ndarray, g: int, n_boot: int, rng) -> np.ndarray:
    sums = np.bincount(codes, weights=a, minlength=g)
    counts = np.bincount(codes, minlength=g).astype(np.float64)
    out = np.empty(n_boot)
    step = max(1, _CHUNK_ELEMS // g)
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        w = _multiplicities(rng, b, g)
        out[start : start + b] = (w @ sums) / (w @ counts)
    return out


# ----------------------------------------------------------------------------- public API


def bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0, stat: Callable = np.mean) -> Estimate:
    """Percentile bootstrap over independent rows. Use :func:`cluster_bootstrap_ci` if rows share prompts.

    ``stat`` should accept ``axis=`` (numpy reductions do); otherwise it is called per resample.
    """
    a = _values(values)
    _check_common(n_boot, alpha)
    point = float(stat(a))
    if a.size == 1:
        return Estimate(point, point, point, 1)
    boot = _boot_stat(a, int(n_boot), np.random.default_rng(seed), stat)
    lo, hi = _percentile(boot, alpha)
    return Estimate(point, lo, hi, int(a.size))


def cluster_bootstrap_ci(values, clusters, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Estimate:
    """Percentile CI of the row mean, resampling whole clusters (e.g. prompts with K samples each).

    Each resample draws as many clusters as there are, with replacement, and takes the mean over all
    rows of the drawn clusters (row-weighted, so unequal cluster sizes are handled).
    """
    a = _values(values)
    _check_common(n_boot, alpha)
    codes, g = _cluster_codes(clusters, a.size)
    point = float(a.mean())
    if g == 1:
        return Estimate(point, point, point, int(a.size), n_clusters=1)
    boot = _boot_cluster_mean(a, codes, g, int(n_boot), np.random.default_rng(seed))
    lo, hi = _percentile(boot, alpha)
    return Estimate(point, lo, hi, int(a.size), n_clusters=g)


def paired_bootstrap_diff(
    a, b, clusters=None, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> Estimate:
    """CI of ``mean(a - b)`` over paired items, with a two-sided bootstrap p-value.

    Pairing removes the item difficulty shared by both systems, which is usually most of the variance.
    Resamples clusters if ``clusters`` is given. The p-value shifts the bootstrap distribution to the
    null (mean 0): ``p = (1 + #{|d* - d| >= |d|}) / (1 + n_boot)``.
    """
    x = _values(a, "a")
    y = _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired (same length); found {x.shape[0]} and {y.shape[0]}")
    _check_common(n_boot, alpha)
    d = x - y
    obs = float(d.mean())
    rng = np.random.default_rng(seed)
    n_clusters = None
    if clusters is not None:
        codes, g = _cluster_codes(clusters, d.size)
        n_clusters = g
        boot = _boot_cluster_mean(d, codes, g, int(n_boot), rng) if g > 1 else np.full(int(n_boot), obs)
    else:
        boot = _boot_stat(d, int(n_boot), rng, np.mean) if d.size > 1 else np.full(int(n_boot), obs)
    lo, hi = _percentile(boot, alpha)
    tol = 1e-12 * max(1.0, abs(obs))
    extreme = int(np.sum(np.abs(boot - obs) >= abs(obs) - tol)) if obs != 0 else boot.size
    p = min(1.0, (1 + extreme) / (1 + boot.size))
    return Estimate(obs, lo, hi, int(d.size), p=p, n_clusters=n_clusters)


def permutation_test(
    statistic_fn: Callable[[np.ndarray], float], n_items: int, n_perm: int = 1000, seed: int = 0, groups=None
) -> np.ndarray:
    """Null distribution: ``statistic_fn(perm)`` for ``n_perm`` random permutations of ``range(n_items)``.

    With ``groups`` (one label per item) items are only permuted within their group, which keeps
    the null honest when the groups differ (e.g. shuffle explanations only within a category).
    ``statistic_fn`` receives the index array; permuting labels or targets with it is up to the caller.
    """
    n = int(n_items)
    if n < 1:
        raise ValueError(f"n_items: expected >= 1; found {n_items}")
    if int(n_perm) < 1:
        raise ValueError(f"n_perm: expected >= 1; found {n_perm}")
    rng = np.random.default_rng(seed)
    keys = rng.random((int(n_perm), n))
    if groups is None:
        perms = np.argsort(keys, axis=1)
    else:
        codes, _ = _cluster_codes(groups, n)
        # Sort by (group, random key): row j of the sorted order is the j-th slot of some group,
        # and so is base[j] below, so perms[:, base[j]] = order[:, j] stays inside the group.
        order = np.argsort(keys + 2.0 * codes[None, :], axis=1)
        base = np.argsort(codes, kind="stable")
        perms = np.empty_like(order)
        perms[:, base] = order
    return np.array([float(statistic_fn(p)) for p in perms], dtype=np.float64)


def permutation_pvalue(observed: float, null, alternative: str = "greater") -> float:
    """``(1 + #{null >= obs}) / (1 + n_perm)`` (never 0; counts the observed arrangement).

    ``alternative``: "greater", "less", or "two-sided" (twice the smaller one-sided p, capped at 1).
    Ties are counted with a 1e-12 relative tolerance, since a permutation that reproduces the data
    often differs from the observed statistic only by float rounding.
    """
    nul = _values(null, "null")
    obs = float(observed)
    if not math.isfinite(obs):
        raise ValueError(f"observed: expected a finite number; found {observed!r}")
    tol = 1e-12 * max(1.0, abs(obs))
    m = nul.size
    p_greater = (1 + int(np.sum(nul >= obs - tol))) / (1 + m)
    p_less = (1 + int(np.sum(nul <= obs + tol))) / (1 + m)
    if alternative == "greater":
        return p_greater
    if alternative == "less":
        return p_less
    if alternative in ("two-sided", "two_sided"):
        return min(1.0, 2.0 * min(p_greater, p_less))
    raise ValueError(f"alternative: expected 'greater', 'less' or 'two-sided'; found {alternative!r}")


def min_detectable_difference(std: float, n_per_group: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference of means a two-sided two-sample test detects with the given power.

    Normal approximation ``(z_{1-alpha/2} + z_{power}) * std * sqrt(2 / n)``; say it in a report
    before claiming "no difference" between two pairs.
    """
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"std: expected a finite number >= 0; found {std!r}")
    if int(n_per_group) < 1:
        raise ValueError(f"n_per_group: expected >= 1; found {n_per_group!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: expected 0 < alpha < 1; found {alpha!r}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power: expected 0 < power < 1; found {power!r}")
    nd = NormalDist()
    z = nd.inv_cdf(1.0 - alpha / 2.0) + nd.inv_cdf(power)
    return float(z * std * math.sqrt(2.0 / int(n_per_group)))


def min_detectable_shift(std: float, n: int, alpha: float = 0.05, power: float = 0.8,
                         one_sided: bool = True) -> float:
    """Smallest true mean of paired differences a one-sample test detects with the given power.

    ``(z_{1-alpha} + z_{power}) * std / sqrt(n)`` (``z_{1-alpha/2}`` when two-sided). This is what a
    "no evidence at this n" verdict must state, so the reader sees what size of effect was ruled out.
    """
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"std: expected a finite number >= 0; found {std!r}")
    if int(n) < 1:
        raise ValueError(f"n: expected >= 1; found {n!r}")
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power: expected values in (0, 1); found {alpha!r}, {power!r}")
    nd = NormalDist()
    z = nd.inv_cdf(1.0 - (alpha if one_sided else alpha / 2.0)) + nd.inv_cdf(power)
    return float(z * std / math.sqrt(int(n)))


def holm(pvalues) -> list:
    """Holm-Bonferroni adjusted p-values (same order; ``None`` entries stay ``None`` and do not count).

    Rejecting where the adjusted p <= alpha controls the family-wise error rate at alpha across the
    family (e.g. the categories of one run), under any dependence between the tests.
    """
    vals = [(i, float(p)) for i, p in enumerate(pvalues) if p is not None and math.isfinite(float(p))]
    m = len(vals)
    out: list = [None] * len(list(pvalues))
    running = 0.0
    for rank, (i, p) in enumerate(sorted(vals, key=lambda t: t[1])):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def format_p(p: Optional[float], n_perm: Optional[int] = None) -> str:
    """``p=0.032``, or ``p ≤ 0.001`` when p is the smallest value ``n_perm`` resamples can give."""
    if p is None or not math.isfinite(float(p)):
        return "p=n/a"
    p = float(p)
    if n_perm:
        floor = 1.0 / (int(n_perm) + 1)
        if p <= floor * (1 + 1e-9):
            return f"p ≤ {floor:.2g}"
    return f"p={p:.2g}" if p < 0.01 else f"p={p:.3f}"


def binomial_tail(k: int, n: int, rate: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, rate)``: the exact one-sided p-value of k successes."""
    if not 0 <= int(k) <= int(n):
        raise ValueError(f"k: expected 0 <= k <= n={n}; found {k}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate: expected a value in [0, 1]; found {rate}")
    return float(min(1.0, sum(math.comb(n, j) * rate ** j * (1 - rate) ** (n - j) for j in range(int(k), int(n) + 1))))


def weighted_bootstrap_ci(values, weights, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Estimate:
    """Percentile CI of ``sum(w*x)/sum(w)`` resampling the units (e.g. items weighted by their rows),
    with the two-sided p-value of :func:`paired_bootstrap_diff` for a mean of 0."""
    a = _values(values)
    w = _values(weights, "weights")
    if a.shape != w.shape or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights: expected one non-negative weight per value with a positive sum")
    _check_common(n_boot, alpha)
    obs = float((a * w).sum() / w.sum())
    if a.size == 1:
        return Estimate(obs, obs, obs, 1, p=1.0)
    rng = np.random.default_rng(seed)
    boot = np.empty(int(n_boot))
    step = max(1, _CHUNK_ELEMS // a.size)
    for start in range(0, int(n_boot), step):
        b = min(step, int(n_boot) - start)
        mult = _multiplicities(rng, b, a.size)
        den = mult @ w
        boot[start:start + b] = np.where(den > 0, (mult @ (a * w)) / np.where(den > 0, den, 1.0), obs)
    lo, hi = _percentile(boot, alpha)
    tol = 1e-12 * max(1.0, abs(obs))
    extreme = int(np.sum(np.abs(boot - obs) >= abs(obs) - tol)) if obs != 0 else boot.size
    return Estimate(obs, lo, hi, int(a.size), p=min(1.0, (1 + extreme) / (1 + boot.size)))


def random_derangements(groups, n_perm: int, seed: int = 0) -> np.ndarray:
    """``[n_perm, n]`` uniform random permutations with no fixed point inside any group of size >= 2.

    A floor meant as "explanations of *other* items" must never give an item its own explanations;
    a plain permutation does so for ~1 item per group, pulling the floor toward the real score by
    about 1/n. Items alone in their group keep themselves (they have no other item to borrow from;
    callers mask them out). Rejection sampling per group (acceptance ~1/e).
    """
    codes, g = _cluster_codes(groups, len(groups))
    n = codes.size
    rng = np.random.default_rng(seed)
    out = np.tile(np.arange(n), (int(n_perm), 1))
    for c in range(g):
        idx = np.flatnonzero(codes == c)
        m = idx.size
        if m < 2:
            continue
        got: list[np.ndarray] = []
        need = int(n_perm)
        while need > 0:
            batch = max(16, int(need * 3))
            p = np.argsort(rng.random((batch, m)), axis=1)
            ok = p[~np.any(p == np.arange(m)[None, :], axis=1)]
            got.append(ok[:need])
            need -= min(need, ok.shape[0])
        perm = np.concatenate(got)[: int(n_perm)]
        out[:, idx] = idx[perm]
    return out


# ----------------------------------------------------------------------------- spread of category means
#
# max − min of the category means. Its plain bootstrap interval is biased upward (with equal true means the
# observed spread is always > 0 and resampled spreads are larger still), so it almost never contains 0 and
# cannot support "uniform across categories". Here the test is a permutation test (category labels shuffled
# over items, sizes kept; an item's K samples move together), the point also comes bias-corrected, and the
# interval is simultaneous: Bonferroni-Welch intervals of every pairwise difference of category means, whose
# largest lower/upper bounds cover the spread (the largest true pairwise difference) with probability ≥ 1 − α,
# a true spread of 0 included.


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
    p = permutation_pvalue(obs, perm_null, alternative="greater")
    # minimum detectable difference between two categories (pooled within-category sd of item means)
    ss, dof = 0.0, 0
    for s, n in zip(sums, cnts):
        if s.size >= 2:
            m = s / n
            ss += float(np.var(m, ddof=1)) * (s.size - 1)
            dof += s.size - 1
    n_min = min(s.size for s in sums)
    mdd = min_detectable_difference(math.sqrt(ss / dof), n_min) if dof and n_min >= 1 else None
    res = {"mean": obs, "lo": lo, "hi": hi, "n": int(all_n.sum()), "n_items": int(all_s.size),
           "n_categories": len(cats), "estimate_bc": max(0.0, obs - bias), "bias": bias, "p": p,
           "n_perm": int(n_perm), "null_mean": float(perm_null.mean()), "mdd": mdd, "alpha": alpha,
           "method": "permutation p (category labels shuffled over items); simultaneous interval from "
                     "Bonferroni-Welch intervals of the pairwise differences over items"}
    p_txt = format_p(p, n_perm)
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
