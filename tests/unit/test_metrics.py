"""Known-answer tests for nlalab.metrics. Every expected value is derived in a comment, not copied
from the implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nlalab import metrics as M

SQ2 = math.sqrt(2.0)


def _ref_set(n=200, d=16, seed=0, offset=1.5):
    """Reference vectors with a shared mean direction (so ||mean unit|| is far from 0 and from 1)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g, dtype=torch.float64)
    v = offset * base / base.norm() + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    # Vary raw norms a lot: every normalised metric must ignore them.
    return v * torch.exp(torch.randn(n, 1, generator=g, dtype=torch.float64))


def _pair(n=64, d=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64))


# ----------------------------------------------------------------------------- basic anchors


def test_perfect_reconstruction():
    v = _ref_set(n=50, d=8)
    s = math.sqrt(8)
    b = M.brv(v, s)
    assert torch.allclose(M.cos(v, v), torch.ones(50, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(M.mse_nrm(v, v, s), torch.zeros(50, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(M.fve_nrm(v, v, s, b), torch.ones(50, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(M.fve_nrm_seed(v, v, s), torch.ones(50, dtype=torch.float64), atol=1e-12)
    assert M.raw_fve(v, v) == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_and_opposite():
    # d=4, s=sqrt(4)=2: mse_nrm = (s^2/d) * ||u - g||^2 = ||u - g||^2 for unit u, g.
    # orthogonal: ||u-g||^2 = 2 -> mse 2; opposite: ||u+u||^2 = 4 -> mse 4.
    e0 = torch.tensor([[3.0, 0, 0, 0]])
    e1 = torch.tensor([[0.0, 0.5, 0, 0]])
    assert M.cos(e0, e1).item() == pytest.approx(0.0, abs=1e-15)
    assert M.mse_nrm(e0, e1, 2.0).item() == pytest.approx(2.0, abs=1e-12)
    assert M.cos(e0, -7 * e0).item() == pytest.approx(-1.0, abs=1e-15)
    assert M.mse_nrm(e0, -7 * e0, 2.0).item() == pytest.approx(4.0, abs=1e-12)


def test_mse_nrm_equals_two_one_minus_cos_at_sqrt_d():
    p, g = _pair(d=32)
    assert torch.allclose(M.mse_nrm(p, g, math.sqrt(32)), 2 * (1 - M.cos(p, g)), atol=1e-12)
    # ... and NOT at another scale: mse = (s^2/d) * 2(1 - cos), here s^2/d = 4/32.
    assert torch.allclose(M.mse_nrm(p, g, 2.0), (4 / 32) * 2 * (1 - M.cos(p, g)), atol=1e-12)


@pytest.mark.parametrize("c", [1e-3, 0.37, 5.0, 1e4])
def test_scale_invariance(c):
    p, g = _pair(d=12)
    s = math.sqrt(12)
    b = 0.61
    for f in (M.cos, lambda a, z: M.mse_nrm(a, z, s), lambda a, z: M.fve_nrm(a, z, s, b),
              lambda a, z: M.fve_nrm_seed(a, z, s)):
        base = f(p, g)
        assert torch.allclose(f(c * p, g), base, atol=1e-12)
        assert torch.allclose(f(p, c * g), base, atol=1e-12)


# ----------------------------------------------------------------------------- hand-computed small examples


def test_cos_hand():
    # [1,0].[1,1] = 1; norms 1 and sqrt2 -> 1/sqrt2.
    assert M.cos(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(1 / SQ2, abs=1e-15)
    # [3,4].[4,3] = 24; norms 5, 5 -> 24/25 = 0.96.
    assert M.cos(torch.tensor([3.0, 4.0]), torch.tensor([4.0, 3.0])).item() == pytest.approx(0.96, abs=1e-15)


def test_mse_nrm_hand():
    p, g = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    # s = sqrt2: n(p) = [sqrt2, 0], n(g) = [1, 1]; diff^2 = (sqrt2-1)^2 + 1 = 4 - 2 sqrt2; /2 -> 2 - sqrt2.
    assert M.mse_nrm(p, g, SQ2).item() == pytest.approx(2 - SQ2, abs=1e-12)
    # s = 1: n(p) = [1, 0], n(g) = [1/sqrt2, 1/sqrt2]; diff^2 = (1 - 1/sqrt2)^2 + 1/2 = 2 - sqrt2; /2 -> 1 - sqrt2/2.
    assert M.mse_nrm(p, g, 1.0).item() == pytest.approx(1 - SQ2 / 2, abs=1e-12)
    # d=3, s=3: n([1,0,0]) = [3,0,0], n([0,1,0]) = [0,3,0]; diff^2 = 9 + 9 = 18; /3 -> 6.
    assert M.mse_nrm(torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), 3.0).item() == pytest.approx(6.0)


def test_fve_nrm_seed_hand():
    s = math.sqrt(3)
    # Zero-mean gold: g = [1,-1,0], p = [1,0,-1]; cos = 1/(sqrt2 sqrt2) = 0.5; mse = 2(1-0.5) = 1.
    # n(g) has mean 0 and mean square s^2/d = 1, so var = 1 and fve_seed = 1 - 1/1 = 0 = 2cos - 1.
    g0, p0 = torch.tensor([1.0, -1.0, 0.0]), torch.tensor([1.0, 0.0, -1.0])
    assert M.fve_nrm_seed(p0, g0, s).item() == pytest.approx(0.0, abs=1e-12)
    assert M.fve_nrm_seed(p0, g0, s).item() == pytest.approx(2 * M.cos(p0, g0).item() - 1, abs=1e-12)
    # Non-zero-mean gold: g = [1,2,2] (||g|| = 3), n(g) = [1,2,2]/sqrt3; mean = 5/(3 sqrt3);
    # var = mean square - mean^2 = 1 - 25/27 = 2/27. p = [2,1,2]: cos = (2+2+4)/9 = 8/9, mse = 2/9.
    # fve_seed = 1 - (2/9)/(2/27) = 1 - 3 = -2, far from 2cos - 1 = 7/9.
    g1, p1 = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([2.0, 1.0, 2.0])
    assert M.fve_nrm_seed(p1, g1, s).item() == pytest.approx(-2.0, abs=1e-12)
    assert M.cos(p1, g1).item() == pytest.approx(8 / 9, abs=1e-15)


def test_fve_nrm_seed_constant_gold_is_nan():
    # n([1,1,1]) has zero variance over its components: the seed ratio is undefined.
    out = M.fve_nrm_seed(torch.tensor([[1.0, 0, 0], [1.0, 2, 3]]), torch.tensor([[1.0, 1, 1], [3.0, 2, 1]]), math.sqrt(3))
    assert math.isnan(out[0].item()) and math.isfinite(out[1].item())


def test_brv_bmn_fve_nrm_hand():
    v = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    # s = sqrt2: n(v) = [sqrt2,0], [0,sqrt2]; mu = [sqrt2/2, sqrt2/2];
    # deviations [+-sqrt2/2, -+sqrt2/2] -> squares 1/2 everywhere -> B_rv = 1/2.
    assert M.brv(v, SQ2) == pytest.approx(0.5, abs=1e-15)
    # s = 1: n(v) = unit rows; mu = [.5,.5]; squares .25 everywhere -> B_rv = 0.25.
    assert M.brv(v, 1.0) == pytest.approx(0.25, abs=1e-15)
    # B_mn, s = sqrt2: n(mu) = [1,1]; (sqrt2-1)^2 + 1 = 4 - 2sqrt2, /2 -> 2 - sqrt2 (both rows alike).
    assert M.bmn(v, SQ2) == pytest.approx(2 - SQ2, abs=1e-12)
    # mean_direction = [.5, .5]
    assert torch.allclose(M.mean_direction(v), torch.tensor([0.5, 0.5], dtype=torch.float64))
    # fve_nrm: p=[3,4], g=[4,3]: cos 0.96, mse (s=sqrt2) = 2*0.04 = 0.08; B_rv 0.5 -> 1 - 0.16 = 0.84.
    assert M.fve_nrm(torch.tensor([3.0, 4.0]), torch.tensor([4.0, 3.0]), SQ2, 0.5).item() == pytest.approx(0.84, abs=1e-12)


def test_centered_hand():
    c = torch.tensor([1.0, 1.0])
    p, g = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])
    # raw: [2,1].[1,3] = 5; norms sqrt5, sqrt10 -> 5/sqrt50 = 1/sqrt2.
    assert M.cos(p, g).item() == pytest.approx(1 / SQ2, abs=1e-15)
    # centred: [1,0] vs [0,2] -> cos 0, mse (s = sqrt2) = 2.
    assert M.centered_cos(p, g, c).item() == pytest.approx(0.0, abs=1e-15)
    assert M.centered_mse(p, g, c, SQ2).item() == pytest.approx(2.0, abs=1e-12)


def test_raw_fve_hand_and_mean_denominator():
    # gold [0,0], [2,0]: mean [1,0]; denominator 1 + 1 = 2. pred [0,0],[1,0]: error 1 -> 1 - 1/2 = 0.5.
    g = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    assert M.raw_fve(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), g) == pytest.approx(0.5, abs=1e-15)
    # Large shared offset: predicting the dataset mean must give 0. A denominator about zero (the
    # SAELens bug) would give 1 - 2/(100 + 144) ~ 0.992 here.
    g2 = torch.tensor([[10.0, 0.0], [12.0, 0.0]])
    assert M.raw_fve(torch.tensor([[11.0, 0.0], [11.0, 0.0]]), g2) == pytest.approx(0.0, abs=1e-15)


# ----------------------------------------------------------------------------- identities on random data


def test_brv_identity():
    for d in (2, 7, 64):
        v = _ref_set(n=300, d=d, seed=d)
        m = (v / v.norm(dim=-1, keepdim=True)).mean(0)
        assert M.brv(v, math.sqrt(d)) == pytest.approx(1 - float(m @ m), abs=1e-12)
        # at another scale B_rv scales by s^2/d
        assert M.brv(v, 3.0) == pytest.approx(9 / d * (1 - float(m @ m)), abs=1e-12)


def test_bmn_identity():
    d = 16
    v = _ref_set(n=300, d=d)
    mu = M.mean_direction(v)
    expected = 2 * (1 - M.cos(v, mu.expand_as(v)).mean().item())
    assert M.bmn(v, math.sqrt(d)) == pytest.approx(expected, abs=1e-12)
    # and in closed form 2(1 - ||mu||) for the mean of unit rows
    assert M.bmn(v, math.sqrt(d)) == pytest.approx(2 * (1 - mu.norm().item()), abs=1e-12)


def test_predict_the_mean():
    d = 16
    s = math.sqrt(d)
    v = _ref_set(n=400, d=d)
    b_rv, b_mn = M.brv(v, s), M.bmn(v, s)
    mu = M.mean_direction(v)
    r = mu.norm().item()
    assert 0.2 < r < 0.99  # non-degenerate set, so the inequalities below are strict

    # 1) Predicting n(mu) for every row: mean mse_nrm is B_mn by definition of B_mn,
    #    and mean fve_nrm is 1 - B_mn/B_rv = 1 - 2(1-r)/((1-r)(1+r)) = -(1-r)/(1+r) < 0 (not 0!).
    pred = M.normalize(mu, s).expand_as(v)
    assert M.mse_nrm(pred, v, s).mean().item() == pytest.approx(b_mn, abs=1e-12)
    fve = M.fve_nrm(pred, v, s, b_rv).mean().item()
    assert fve == pytest.approx(1 - b_mn / b_rv, abs=1e-12)
    assert fve == pytest.approx(-(1 - r) / (1 + r), abs=1e-12)
    assert fve < 0 and b_mn > b_rv

    # 2) Predicting the un-normalised mu (or any positive multiple): mse_nrm renormalises pred, so the
    #    result is identical. B_rv would be the mse of the un-normalised n-space mean, a prediction
    #    mse_nrm cannot express; that is why predict-the-mean scores below 0 under fve_nrm.
    for c in (1.0, 1e3):
        assert M.mse_nrm((c * mu).expand_as(v), v, s).mean().item() == pytest.approx(b_mn, abs=1e-12)
    mu_s = M.normalize(v, s).mean(0)
    assert (M.normalize(v, s) - mu_s).pow(2).mean().item() == pytest.approx(b_rv, abs=1e-12)

    # 3) raw_fve of predicting the raw dataset mean of the gold vectors is exactly 0.
    assert M.raw_fve(v.mean(0).expand_as(v), v) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- API behaviour


def test_zero_vector_normalises_to_zero():
    out = M.normalize(torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 4.0]]), 5.0)
    assert torch.equal(out[0], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(out[1], torch.tensor([0.0, 3.0, 4.0], dtype=torch.float64))
    assert M.cos(torch.zeros(3), torch.ones(3)).item() == 0.0


def test_numpy_input_batched_shape_and_dtype():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(2, 3, 5)).astype(np.float32)
    g = rng.normal(size=(2, 3, 5))
    out = M.score_pairs(p, g, math.sqrt(5), b_rv=0.8, center=np.zeros(5))
    assert set(out) == {"cos", "mse_nrm", "fve_nrm_seed", "fve_nrm", "centered_cos", "centered_mse_nrm"}
    for t in out.values():
        assert t.shape == (2, 3) and t.dtype == torch.float64
    assert torch.allclose(out["centered_cos"], out["cos"])  # zero center changes nothing
    assert torch.allclose(out["fve_nrm"], 1 - out["mse_nrm"] / 0.8)
    assert set(M.score_pairs(p, g, math.sqrt(5))) == {"cos", "mse_nrm", "fve_nrm_seed"}


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"pred \(4, 3\).*gold \(4, 2\)"):
        M.cos(torch.ones(4, 3), torch.ones(4, 2))
    with pytest.raises(ValueError, match="last dim d >= 2"):
        M.mse_nrm(torch.ones(4, 1), torch.ones(4, 1), 1.0)
    with pytest.raises(ValueError, match=r"center: found shape \(2,\)"):
        M.centered_cos(torch.ones(4, 3), torch.ones(4, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="reference_vectors"):
        M.brv(torch.ones(3), 1.0)


def test_nonfinite_raises_and_names_argument():
    bad = torch.ones(3, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"pred: found 1 non-finite.*\(1, 2\)"):
        M.cos(bad, torch.ones(3, 4))
    with pytest.raises(ValueError, match="gold: found 1 non-finite"):
        M.score_pairs(torch.ones(3, 4), bad, 2.0)
    inf = torch.ones(3, 4)
    inf[0, 0] = float("inf")
    with pytest.raises(ValueError, match="reference_vectors"):
        M.bmn(inf, 2.0)


@pytest.mark.parametrize("b", [0.0, -0.1, float("nan"), float("inf")])
def test_fve_nrm_rejects_bad_brv(b):
    with pytest.raises(ValueError, match="b_rv"):
        M.fve_nrm(torch.ones(2, 3), torch.ones(2, 3), math.sqrt(3), b)


@pytest.mark.parametrize("s", [0.0, -1.0, float("nan")])
def test_bad_scale_raises(s):
    with pytest.raises(ValueError, match="mse_scale"):
        M.mse_nrm(torch.ones(2, 3), torch.ones(2, 3), s)


def test_raw_fve_needs_variance():
    with pytest.raises(ValueError, match="zero total variance"):
        M.raw_fve(torch.ones(1, 3), torch.ones(1, 3))
