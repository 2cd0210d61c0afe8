"""Known answers for the reconstruction-side controls (issue: is fve_nrm item-specific at all?)."""

import numpy as np
import pytest
import torch

from nlalab import metrics
from nlalab.study import recon_controls as RC

CATS = ["chat", "code", "agent", "reasoning"]


def synthetic(n_per=10, k=3, d=32, seed=0, item_specific=True):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(len(CATS), d, generator=g) * 3
    cats, acts = [], []
    for c in range(len(CATS)):
        for _ in range(n_per):
            cats.append(CATS[c])
            acts.append(means[c] + torch.randn(d, generator=g))
    acts = torch.stack(acts)
    rows, rec = [], []
    for i in range(acts.shape[0]):
        c = CATS.index(cats[i])
        for _ in range(k):
            rows.append(i)
            if item_specific:
                rec.append(acts[i] + 0.1 * torch.randn(d, generator=g))
            else:  # depends only on the category: the category mean plus fresh noise
                rec.append(means[c] + torch.randn(d, generator=g))
    return acts, torch.stack(rec), rows, cats


def run(acts, rec, rows, cats, n_perm=500):
    d = acts.shape[1]
    return RC.recon_permutation(acts, rec, rows, cats, CATS, d ** 0.5, metrics.brv(acts, d ** 0.5), acts.mean(0),
                                n_perm=n_perm, seed=1)


def test_category_only_reconstructions_sit_on_the_within_floor():
    out = run(*synthetic(item_specific=False))
    o = out["metrics"]["fve_nrm"]["overall"]
    assert abs(o["gap_within"]) < 0.05 and o["p_within"] > 0.05
    assert o["gap_cross"] > 0.2 and o["p_cross"] < 0.01  # the category itself is recovered
    assert all("no evidence of item-specific content at this n" in v and "minimum detectable gap" in v
               and "Holm" in v for v in out["verdicts"].values())


def test_item_specific_reconstructions_beat_the_within_floor():
    out = run(*synthetic(item_specific=True), n_perm=500)
    for m in ("cos", "fve_nrm", "centered_cos"):
        o = out["metrics"][m]["overall"]
        assert o["gap_within"] > 0.05 and o["p_within"] <= 2 / 501
    assert all("evidence of item-specific content (gap +" in v and "Holm" in v for v in out["verdicts"].values())
    assert out["verdict"].startswith("fve_nrm: evidence of item-specific content (gap +")


def test_real_score_matches_row_metrics():
    acts, rec, rows, cats = synthetic()
    out = run(acts, rec, rows, cats, n_perm=50)
    d = acts.shape[1]
    direct = metrics.fve_nrm(rec, acts[rows], d ** 0.5, metrics.brv(acts, d ** 0.5)).mean().item()
    assert out["metrics"]["fve_nrm"]["overall"]["real"] == pytest.approx(direct, abs=1e-9)
    cos = metrics.cos(rec, acts[rows]).mean().item()
    assert out["metrics"]["cos"]["overall"]["real"] == pytest.approx(cos, abs=1e-9)


def test_mean_direction_rung():
    acts, rec, rows, cats = synthetic()
    d = acts.shape[1]
    s, brv = d ** 0.5, metrics.brv(acts, d ** 0.5)
    mu = metrics.mean_direction(acts)[None].float()
    lad = RC.baseline_ladder(acts, {"real_pair": (rec, rows), "mean_direction": (mu, list(range(len(acts))))},
                             s, brv, acts.mean(0), n_boot=200)
    want = 1 - metrics.bmn(acts, s) / brv
    assert lad["mean_direction"]["fve_nrm"]["mean"] == pytest.approx(want, abs=1e-6)
    assert want <= 0
    assert lad["mean_direction"]["raw_fve_of_dataset_mean"] == pytest.approx(0.0, abs=1e-12)
    gap = lad["real_pair"]["fve_nrm"]["mean"] - want
    assert lad["mean_direction"]["fve_nrm"]["gap_real_minus_this"] == pytest.approx(gap, abs=1e-9)


def test_prefixes_and_curve():
    assert RC.prefixes("One. Two! Three?\nFour") == ["One.", "One. Two!", "One. Two! Three?", "One. Two! Three?\nFour"]
    assert RC.prefixes("a. b. c. d. e. f.", max_parts=2) == ["a.", "a. b."]
    curve = RC.prefix_curve([{"n_sentences": 1, "is_full": False, "cos": 0.2, "fve_nrm": -1.0},
                             {"n_sentences": 2, "is_full": True, "cos": 0.6, "fve_nrm": 0.5},
                             {"n_sentences": 1, "is_full": True, "cos": 0.4, "fve_nrm": 0.0}])
    assert curve["1"]["cos"] == pytest.approx(0.3) and curve["1"]["n"] == 2
    assert curve["full"]["fve_nrm"] == pytest.approx(0.25)


def test_grounding_deltas_and_seed_spread():
    base = {m: np.zeros(4) for m in ("cos", "fve_nrm", "centered_cos")}
    var = {"true": {m: np.full(4, 0.3) for m in base}, "false": {m: np.full(4, -0.1) for m in base}}
    g = RC.grounding(base, var, n_boot=100, seed=0, clusters=np.arange(4))
    assert g["true"]["fve_nrm"]["mean"] == pytest.approx(0.3)
    assert g["true_minus_false"]["fve_nrm"]["mean"] == pytest.approx(0.4)
    sp = RC.seed_spread([{"fve_nrm": 0.1, "recall": 0.2}, {"fve_nrm": 0.3, "recall": 0.2}])
    assert sp["fve_nrm"]["std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert sp["recall"]["std"] == 0
