"""Known-answer and calibration tests for nlalab.stats (all seeded, all fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nlalab import stats as S


# ----------------------------------------------------------------------------- bootstrap_ci


def test_bootstrap_coverage_of_known_mean():
    # N(0.3, 1), n = 100: a 95% percentile CI should contain 0.3 in ~95% of seeds.
    hits = 0
    for seed in range(200):
        x = np.random.default_rng(1000 + seed).normal(0.3, 1.0, size=100)
        e = S.bootstrap_ci(x, n_boot=1000, seed=seed)
        assert e.lo <= e.mean <= e.hi
        hits += e.lo <= 0.3 <= e.hi
    assert 0.88 * 200 <= hits <= 0.99 * 200


def test_bootstrap_width_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = {}
    for n in (25, 100, 400):
        e = S.bootstrap_ci(rng.normal(size=n), n_boot=4000, seed=1)
        widths[n] = e.hi - e.lo
    # width ~ 2*1.96/sqrt(n): 0.78, 0.39, 0.20 -> each 4x in n roughly halves it
    assert widths[100] < 0.7 * widths[25]
    assert widths[400] < 0.7 * widths[100]
    assert widths[400] == pytest.approx(2 * 1.96 / 20, rel=0.2)


def test_bootstrap_same_seed_same_result():
    x = np.random.default_rng(3).exponential(size=150)
    a = S.bootstrap_ci(x, n_boot=2000, seed=7)
    assert a == S.bootstrap_ci(x, n_boot=2000, seed=7)
    assert a != S.bootstrap_ci(x, n_boot=2000, seed=8)
    assert a.mean == pytest.approx(x.mean()) and a.n == 150 and a.p is None


def test_bootstrap_edge_cases():
    assert tuple(S.bootstrap_ci([0.7])[:3]) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError, match="empty"):
        S.bootstrap_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        S.bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="alpha"):
        S.bootstrap_ci([1.0, 2.0], alpha=1.5)
    d = S.bootstrap_ci([1.0, 2.0, 3.0]).to_dict()
    assert set(d) >= {"mean", "lo", "hi", "n", "p"} and d["n"] == 3


def test_bootstrap_other_stats():
    x = np.random.default_rng(4).normal(size=101)
    med = S.bootstrap_ci(x, stat=np.median, seed=0)
    assert med.mean == pytest.approx(np.median(x)) and med.lo < med.mean < med.hi
    # a statistic without axis= support falls back to one call per resample
    mx = S.bootstrap_ci(x, n_boot=300, stat=lambda v: float(max(v)), seed=0)
    assert mx.mean == pytest.approx(x.max()) and mx.hi == pytest.approx(x.max())


def test_bootstrap_fast_enough():
    import time

    x = np.random.default_rng(0).normal(size=150)
    t = time.perf_counter()
    S.bootstrap_ci(x, n_boot=10_000)
    S.cluster_bootstrap_ci(x, np.repeat(np.arange(50), 3), n_boot=10_000)
    S.paired_bootstrap_diff(x, x[::-1], n_boot=10_000)
    assert time.perf_counter() - t < 1.0


# ----------------------------------------------------------------------------- cluster bootstrap


def test_cluster_bootstrap_on_duplicated_clusters():
    # 40 prompts, each sample duplicated K=5 times: there are only 40 independent values.
    u = np.random.default_rng(5).normal(size=40)
    K = 5
    vals = np.repeat(u, K)
    clusters = np.repeat(np.arange(40), K)
    naive = S.bootstrap_ci(vals, n_boot=4000, seed=0)
    clus = S.cluster_bootstrap_ci(vals, clusters, n_boot=4000, seed=0)
    assert clus.mean == pytest.approx(u.mean()) and clus.n == 200 and clus.n_clusters == 40
    # naive width is ~1/sqrt(K) = 0.45 of the honest width
    assert (naive.hi - naive.lo) < 0.6 * (clus.hi - clus.lo)
    # With equal cluster sizes, resampling clusters of duplicates == bootstrapping the 40 unique
    # values (same seed -> same draws), so the intervals agree exactly.
    uniq = S.bootstrap_ci(u, n_boot=4000, seed=0)
    assert clus.lo == pytest.approx(uniq.lo, abs=1e-12) and clus.hi == pytest.approx(uniq.hi, abs=1e-12)


def test_cluster_bootstrap_unequal_sizes_and_labels():
    vals = np.array([1.0, 1.0, 1.0, 5.0])
    e = S.cluster_bootstrap_ci(vals, ["a", "a", "a", "b"], n_boot=2000, seed=0)
    assert e.mean == pytest.approx(2.0)  # row mean, not mean of cluster means (3.0)
    # resamples are {a,a} -> 1, {b,b} -> 5, {a,b} -> 2: the CI spans [1, 5]
    assert e.lo == pytest.approx(1.0) and e.hi == pytest.approx(5.0)
    with pytest.raises(ValueError, match="clusters"):
        S.cluster_bootstrap_ci(vals, [0, 1])
    one = S.cluster_bootstrap_ci(vals, [0, 0, 0, 0])
    assert (one.lo, one.hi, one.n_clusters) == (2.0, 2.0, 1)


# ----------------------------------------------------------------------------- paired difference


def test_paired_diff_real_effect():
    rng = np.random.default_rng(6)
    item = rng.normal(0, 2.0, size=150)  # shared item difficulty, cancels in the pairing
    a = item + 0.1 + rng.normal(0, 0.1, size=150)
    b = item + rng.normal(0, 0.1, size=150)
    e = S.paired_bootstrap_diff(a, b, n_boot=4000, seed=0)
    assert e.mean == pytest.approx(np.mean(a - b))
    assert 0 < e.lo < e.mean < e.hi
    assert e.p == pytest.approx(1 / 4001)  # no resample reaches the null
    # an unpaired CI on the same data would be ~20x wider and contain 0
    ua, ub = S.bootstrap_ci(a, seed=0), S.bootstrap_ci(b, seed=1)
    assert ua.lo < ub.hi


def test_paired_diff_null_and_identical():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=120), rng.normal(size=120)
    e = S.paired_bootstrap_diff(a, b, n_boot=4000, seed=0)
    assert e.lo < 0 < e.hi and e.p > 0.05
    same = S.paired_bootstrap_diff(a, a)
    assert (same.mean, same.lo, same.hi, same.p) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="paired"):
        S.paired_bootstrap_diff(a, b[:-1])


def test_paired_diff_clusters_widen():
    rng = np.random.default_rng(8)
    d_prompt = rng.normal(0.05, 0.3, size=30)
    a = np.repeat(d_prompt, 4) + rng.normal(0, 0.01, size=120)
    b = np.zeros(120)
    rows = S.paired_bootstrap_diff(a, b, seed=0)
    clus = S.paired_bootstrap_diff(a, b, clusters=np.repeat(np.arange(30), 4), seed=0)
    assert clus.n_clusters == 30 and rows.n_clusters is None
    assert (clus.hi - clus.lo) > 1.5 * (rows.hi - rows.lo)
    assert clus.p > rows.p


# ----------------------------------------------------------------------------- permutation tests


def _mean_diff_stat(y, labels):
    def f(perm):
        lab = labels[perm]
        return y[lab == 1].mean() - y[lab == 0].mean()

    return f


def test_permutation_real_effect():
    rng = np.random.default_rng(9)
    labels = np.repeat([0, 1], 30)
    y = labels * 1.5 + rng.normal(size=60)  # z ~ 1.5 / sqrt(2/30) ~ 5.8
    f = _mean_diff_stat(y, labels)
    null = S.permutation_test(f, 60, n_perm=1000, seed=0)
    assert null.shape == (1000,)
    p = S.permutation_pvalue(f(np.arange(60)), null)
    assert p < 0.01
    assert p == pytest.approx(1 / 1001)


def test_permutation_null_calibrated():
    labels = np.repeat([0, 1], 20)
    ps = []
    for seed in range(200):
        y = np.random.default_rng(100 + seed).normal(size=40)
        f = _mean_diff_stat(y, labels)
        ps.append(S.permutation_pvalue(f(np.arange(40)), S.permutation_test(f, 40, n_perm=199, seed=seed)))
    ps = np.array(ps)
    # roughly uniform: ~5% below 0.05, ~50% below 0.5
    assert 0.01 <= np.mean(ps <= 0.05) <= 0.10
    assert 0.40 <= np.mean(ps <= 0.5) <= 0.60
    assert ps[0] > 0.05  # the fixed-seed null case (verified value)


def test_within_group_permutations_stay_in_group():
    groups = np.array(["x", "y", "x", "z", "y", "x", "z", "z", "y", "x"])
    seen = []
    S.permutation_test(lambda p: seen.append(p.copy()) or 0.0, len(groups), n_perm=300, seed=0, groups=groups)
    perms = np.array(seen)
    assert perms.shape == (300, 10)
    assert np.all(np.sort(perms, axis=1) == np.arange(10))  # each row is a permutation
    assert np.all(groups[perms] == groups)  # no item ever leaves its group
    assert len({tuple(p) for p in perms}) > 50  # and they are actually shuffled
    # without groups, items do cross groups
    seen.clear()
    S.permutation_test(lambda p: seen.append(p.copy()) or 0.0, 10, n_perm=50, seed=0)
    assert not np.all(groups[np.array(seen)] == groups)


def test_permutation_test_deterministic():
    f = lambda p: float(p[0] * 10 + p[1])  # noqa: E731
    a = S.permutation_test(f, 12, n_perm=100, seed=3)
    assert np.array_equal(a, S.permutation_test(f, 12, n_perm=100, seed=3))
    assert not np.array_equal(a, S.permutation_test(f, 12, n_perm=100, seed=4))


def test_permutation_pvalue_formula():
    null = np.arange(99, dtype=float)  # 0..98
    assert S.permutation_pvalue(98.0, null) == pytest.approx(2 / 100)  # one null value >= 98
    assert S.permutation_pvalue(1e3, null) == pytest.approx(1 / 100)
    assert S.permutation_pvalue(-1.0, null) == pytest.approx(1.0)
    assert S.permutation_pvalue(0.0, null, alternative="less") == pytest.approx(2 / 100)
    assert S.permutation_pvalue(98.0, null, alternative="two-sided") == pytest.approx(4 / 100)
    assert S.permutation_pvalue(49.0, null, alternative="two-sided") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="alternative"):
        S.permutation_pvalue(1.0, null, alternative="bigger")


# ----------------------------------------------------------------------------- power


def test_min_detectable_difference():
    # z_{0.975} + z_{0.8} = 1.959964 + 0.841621 = 2.801585; * 1 * sqrt(2/50) = 2.801585 * 0.2
    assert S.min_detectable_difference(1.0, 50) == pytest.approx(0.560317, abs=1e-6)
    assert S.min_detectable_difference(0.3, 150) == pytest.approx(2.801585 * 0.3 * math.sqrt(2 / 150), abs=1e-6)
    assert S.min_detectable_difference(0.0, 10) == 0.0
    with pytest.raises(ValueError):
        S.min_detectable_difference(1.0, 0)
    with pytest.raises(ValueError):
        S.min_detectable_difference(1.0, 10, power=1.0)
