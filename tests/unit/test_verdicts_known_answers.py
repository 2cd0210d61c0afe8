"""Known answers for each fix of issue 15: every verdict claims no more than its statistic."""

import itertools
import math

import numpy as np
import pytest

from nlalab import stats as S
from nlalab.report import compare as C
from nlalab.report import pattern as PT
from nlalab.study import analysis as A
from nlalab.study import recon_controls as RC
from nlalab.testing.simulate import SEED_DESIGN, simulate_rows


# ----------------------------------------------------------------------------- stats helpers


def test_holm_known_values_and_none_entries():
    # sorted p 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    adj = S.holm([0.01, 0.04, 0.03, None])
    assert adj[:3] == pytest.approx([0.03, 0.06, 0.06]) and adj[3] is None
    assert S.holm([0.5]) == [0.5]
    assert S.holm([0.4, 0.4]) == pytest.approx([0.8, 0.8])
    assert S.holm([0.9, 0.9, 0.9]) == pytest.approx([1.0, 1.0, 1.0])  # capped


def test_format_p_at_the_permutation_floor():
    assert S.format_p(1 / 1001, 1000) == "p ≤ 0.001"
    assert S.format_p(2 / 1001, 1000) == "p=0.002"
    assert S.format_p(0.0423, 1000) == "p=0.042"
    assert S.format_p(None) == "p=n/a"


def test_binomial_tail_and_one_sample_mdd():
    assert S.binomial_tail(4, 4, 0.75) == pytest.approx(0.75 ** 4)
    assert S.binomial_tail(0, 4, 0.3) == pytest.approx(1.0)
    assert S.binomial_tail(3, 4, 0.25) == pytest.approx(4 * 0.25 ** 3 * 0.75 + 0.25 ** 4)
    # (z_.95 + z_.8) * sd / sqrt(n) = (1.6449 + 0.8416) * 2 / 10
    assert S.min_detectable_shift(2.0, 100) == pytest.approx((1.644854 + 0.841621) * 0.2, abs=1e-5)
    assert S.min_detectable_shift(2.0, 100, one_sided=False) == pytest.approx((1.959964 + 0.841621) * 0.2, abs=1e-5)


def test_weighted_bootstrap_weighted_mean_and_interval():
    e = S.weighted_bootstrap_ci([1.0, 3.0], [3.0, 1.0], n_boot=500, seed=0)
    assert e.mean == pytest.approx(1.5)
    assert 1.0 <= e.lo <= e.mean <= e.hi <= 3.0
    with pytest.raises(ValueError):
        S.weighted_bootstrap_ci([1.0, 2.0], [0.0, 0.0])


def test_random_derangements_have_no_fixed_point_in_groups_and_are_uniform():
    D = S.random_derangements(["a"] * 3 + ["b"] * 4 + ["c"], 3000, seed=1)
    assert D.shape == (3000, 8)
    assert not np.any(D[:, :7] == np.arange(7)[None, :])
    assert np.all(D[:, 7] == 7)  # alone in its group: keeps itself
    assert np.all(np.isin(D[:, :3], [0, 1, 2])) and np.all(np.isin(D[:, 3:7], [3, 4, 5, 6]))
    # 3 items have exactly 2 derangements (the two 3-cycles), each with probability 1/2
    first = D[:, 0]
    assert set(first.tolist()) == {1, 2}
    assert abs(np.mean(first == 1) - 0.5) < 0.04


# ----------------------------------------------------------------------------- derangement floor


def test_derangement_floor_on_a_hand_built_three_item_case():
    # S[i, j]: score of item j's explanations against item i (K=1). The two derangements of 3 items:
    # (1, 2, 0) -> S01+S12+S20 = 0.2+0.4+0.6 = 1.2 -> mean 0.4 ; (2, 0, 1) -> S02+S10+S21 = 0.3+0.5+0.7 -> 0.5
    Smat = np.array([[0.9, 0.2, 0.3], [0.5, 0.9, 0.4], [0.6, 0.7, 0.9]])
    W = np.ones((3, 3))
    out = A.matrix_permutation(Smat, W, np.array(["c"] * 3), ["c"], n_perm=4000, seed=0)
    o = out["overall"]
    assert o["real"] == pytest.approx(0.9)
    assert 0.4 - 1e-12 <= o["floor_within"]["lo"] and o["floor_within"]["hi"] <= 0.5 + 1e-12
    assert o["floor_within"]["mean"] == pytest.approx(0.45, abs=0.01)
    assert o["gap_within"] == pytest.approx(0.45, abs=0.01)
    # the old full-permutation floor averages all 6 permutations, identity (0.9) included: a smaller gap
    full = np.mean([np.mean([Smat[i, p[i]] for i in range(3)]) for p in itertools.permutations(range(3))])
    assert 0.9 - full < o["gap_within"] - 0.05
    # per-item gap: own minus the mean of the two others, averaged: equals the derangement gap here
    d = [0.9 - (0.2 + 0.3) / 2, 0.9 - (0.5 + 0.4) / 2, 0.9 - (0.6 + 0.7) / 2]
    assert o["gap_within_ci"]["mean"] == pytest.approx(np.mean(d))
    # p stays on full permutations: identity is 1 of 6 arrangements, so p ≈ 1/6, never below
    assert o["p_within"] == pytest.approx(1 / 6, abs=0.03)
    assert o["verdict"].startswith("no evidence") and "minimum detectable gap" in o["verdict"]


def test_single_item_category_has_no_within_floor():
    Smat = np.eye(3) * 0.5 + 0.1
    out = A.matrix_permutation(Smat, np.ones((3, 3)), np.array(["a", "a", "b"]), ["a", "b"], n_perm=200, seed=0)
    assert out["per_category"]["b"]["gap_within"] is None
    assert "single item" in out["per_category"]["b"]["verdict"]
    assert out["per_category"]["a"]["p_within_holm"] == pytest.approx(out["per_category"]["a"]["p_within"])


def test_gap_verdict_wording():
    ev = A.gap_verdict(0.1, {"lo": 0.05, "hi": 0.15}, 1 / 1001, 4 / 1001, 1000, 0.02, 0.05, "over 4 categories")
    assert ev == ("evidence of item-specific content (gap +0.100 [+0.050, +0.150] above the within-category floor, "
                  "p ≤ 0.001, Holm-adjusted p=0.004 over 4 categories)")
    ne = A.gap_verdict(0.01, {"lo": -0.02, "hi": 0.04}, 0.02, 0.08, 1000, 0.035, 0.05, "over 4 categories")
    assert ne.startswith("no evidence of item-specific content at this n") and "minimum detectable gap 0.035" in ne
    assert "NOT" not in ne and "explains" not in ne


# ----------------------------------------------------------------------------- stability ddof


def test_stability_within_is_unbiased_at_k2():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(400):
        base = rng.normal(0, 1)
        for k in range(2):
            rows.append({"item_id": f"i{i}", "category": "c", "prompt": f"p{i}", "sample": k, "explanation": "x",
                         "cos": base + rng.normal(0, 0.1), "fve_nrm": 0.0, "recall": None})
    st = A._stability(*A._validate_samples(rows, ["c"]))["c"]["cos"]
    assert st["within"] == pytest.approx(0.1, rel=0.08)  # the old ddof=0 mean of stds gave ~0.056


# ----------------------------------------------------------------------------- spread


def test_spread_is_none_with_one_category_and_zero_spread_interval_reaches_zero():
    rows = [{"item_id": f"i{i}", "category": "a", "fve_nrm": 0.1 * i} for i in range(5)]
    assert PT.spread_from_rows(rows, "fve_nrm", ["a", "b"]) is None
    assert C.spread_ci(rows, "fve_nrm", ["a", "b"], 100, 0) is None
    # two categories with identical item values: spread 0, interval [0, hi], no evidence
    rows = [{"item_id": f"{c}{i}", "category": c, "fve_nrm": 0.1 * i} for c in "ab" for i in range(6)]
    res = PT.spread_from_rows(rows, "fve_nrm", ["a", "b"], n_perm=200, n_boot=200, seed=0)
    assert res["mean"] == pytest.approx(0.0, abs=1e-12) and res["lo"] == 0.0 and res["hi"] > 0
    assert res["p"] == pytest.approx(1.0) and res["verdict"].startswith("no evidence")


def test_spread_separated_categories_reach_the_permutation_floor():
    rows = [{"item_id": f"{c}{i}", "category": c, "fve_nrm": (1.0 if c == "a" else 0.0) + 0.01 * i}
            for c in "ab" for i in range(8)]
    res = PT.spread_from_rows(rows, "fve_nrm", ["a", "b"], n_perm=999, n_boot=200, seed=0)
    assert res["mean"] == pytest.approx(1.0)
    assert res["p"] == pytest.approx(1 / 1000) and "p ≤ 0.001" in res["verdict"]
    assert res["lo"] > 0.9 and res["verdict"].startswith("evidence")


def test_t_quantile_matches_tables():
    assert PT.t_quantile(0.975, 11) == pytest.approx(2.200985, abs=1e-4)
    assert PT.t_quantile(0.975, 5) == pytest.approx(2.570582, abs=1e-3)
    assert PT.t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)


def test_analyze_writes_spread_test_and_no_spread_for_one_category():
    rows = simulate_rows(seed=0, with_text=True)
    res = A.analyze(rows, categories=SEED_DESIGN.categories, b_rv=1.0, b_rv_source="sim", n_perm=50, n_boot=50)
    assert set(res["spread_test"]) == {"fve_nrm", "recall"}
    assert res["spread_test"]["fve_nrm"]["mean"] == pytest.approx(res["spread"]["fve_nrm"])
    one = [r for r in rows if r["category"] == "chat"]
    res1 = A.analyze(one, categories=["chat"], b_rv=1.0, b_rv_source="sim", n_perm=20, n_boot=20)
    assert res1["spread"]["fve_nrm"] is None and res1["spread_test"]["fve_nrm"] is None


# ----------------------------------------------------------------------------- pattern


def test_pattern_counts_only_significant_steps():
    big_but_noisy = [{"mean": 0.2, "p": 0.2}, {"mean": 0.2, "p": 0.3}]
    assert PT.classify_steps([0.1, 0.3, 0.5], big_but_noisy, ["A", "B", "C"])["kind"] == "flat"
    # Holm: 0.03 and 0.04 are both significant alone, not after Holm (0.06, 0.06)
    p = PT.classify_steps([0.1, 0.2, 0.3], [{"mean": 0.1, "p": 0.03}, {"mean": 0.1, "p": 0.04}])
    assert p["kind"] == "flat" and [s["p_holm"] for s in p["steps"]] == pytest.approx([0.06, 0.06])
    assert PT.classify_steps([0.1, 0.2, 0.3], [{"mean": 0.1, "p": 0.001}, {"mean": 0.1, "p": 0.01}])["kind"] \
        == "monotonic_up"
    assert PT.classify_steps([0.1, 0.5, 0.51], [{"mean": 0.4, "p": 0.001}, {"mean": 0.01, "p": 0.6}])["kind"] \
        == "saturating_up"
    pk = PT.classify_steps([0.1, 0.5, 0.2], [{"mean": 0.4, "p": 0.001}, {"mean": -0.3, "p": 0.001}], ["A", "B", "C"])
    assert pk["kind"] == "peak" and pk["text"].startswith("peak at B")
    # steps from intervals only: normal approximation
    assert PT.classify_steps([0.0, 1.0], [{"mean": 1.0, "lo": 0.5, "hi": 1.5}])["kind"] == "monotonic_up"
    assert PT.classify_steps([0.0, 1.0], [None])["kind"] == "na"
    assert C.classify_pattern([0.1, 0.3, 0.5], ["A", "B", "C"], steps=big_but_noisy)["kind"] == "flat"


def test_step_from_estimates_known_numbers():
    z = 1.959964
    a = {"mean": 0.5, "lo": 0.5 - z * 0.03, "hi": 0.5 + z * 0.03}
    b = {"mean": 0.6, "lo": 0.6 - z * 0.04, "hi": 0.6 + z * 0.04}
    st = PT.step_from_estimates(a, b)
    assert st["mean"] == pytest.approx(0.1)
    assert st["hi"] - st["lo"] == pytest.approx(2 * z * 0.05, rel=1e-6)
    assert st["p"] == pytest.approx(2 * (1 - 0.9772499), abs=1e-5)  # z = 0.1 / 0.05 = 2
    assert PT.step_from_estimates(a, {"mean": 0.6, "p": 0.1}) is None


# ----------------------------------------------------------------------------- prefix curve


def test_prefix_texts_keep_the_scored_text_and_carry_it_forward():
    text = "First line.\nSecond one!  Third?"
    out = RC.prefix_texts(text, 5)
    assert [(L, f) for L, f, _ in out] == [(1, False), (2, False), (3, True), (4, True), (5, True)]
    assert out[0][2] == "First line." and out[1][2] == "First line.\nSecond one!"
    assert all(t == text for _, f, t in out if f)
    long = "a. b. c. d. e. f. g."
    lo = RC.prefix_texts(long, 5)
    assert [(L, f) for L, f, _ in lo] == [(1, False), (2, False), (3, False), (4, False), (5, False), (7, True)]
    assert lo[-1][2] == long and lo[4][2] == "a. b. c. d. e."
    with pytest.raises(ValueError):
        RC.prefix_texts(text, 0)


def test_planted_composition_effect_old_curve_rises_new_curve_is_flat():
    # Short explanations (1 sentence) score 0.2 at every length, long ones (3 sentences) 0.8 at every
    # length: the explanation text adds nothing after sentence 1, but long ones are simply better.
    rows = []
    for i in range(10):
        n_sent = 1 if i < 5 else 3
        f = 0.2 if n_sent == 1 else 0.8
        for L, full, _ in RC.prefix_texts(". ".join(["s"] * n_sent) + ".", 3):
            rows.append({"row": i, "n_sentences": L, "is_full": full, "cos": f, "fve_nrm": f})
    old_style = [{k: v for k, v in r.items() if k != "row"} for r in rows if r["n_sentences"] <= 1 or
                 r["row"] >= 5]  # the old pipeline had no carried-forward rows
    old = RC.prefix_curve(old_style)
    assert old["1"]["fve_nrm"] == pytest.approx(0.5) and old["3"]["fve_nrm"] == pytest.approx(0.8)  # fake rise
    assert "warning" in old
    new = RC.prefix_curve(rows, n_boot=200)
    for L in ("1", "2"):  # points up to the longest true prefix; sentence 3 of 3 is the full text
        assert new[L]["fve_nrm"] == pytest.approx(0.5) and new[L]["n"] == 10
    assert new["2"]["n_carried_full"] == 5 and "3" not in new
    assert new["full"]["fve_nrm"] == pytest.approx(0.5)
    assert new["full_minus_first"]["fve_nrm"]["mean"] == pytest.approx(0.0)
    assert new["verdict"].startswith("no evidence")


# ----------------------------------------------------------------------------- grounding


class _It:
    def __init__(self, i, c):
        self.id, self.category, self.prompt = f"{c}{i}", c, f"prompt {c}{i}."


def test_grounding_texts_use_a_same_category_false_sentence():
    items = [_It(i, c) for c in ("a", "b") for i in range(3)] + [_It(0, "z")]
    first = [(10 + k, {"vector_index": k, "explanation": f"expl {k}  \n"}) for k in range(len(items))]
    out = RC.grounding_texts(items, first, seed=0)
    for (j, texts, info), (jj, r) in zip(out, first):
        it = items[r["vector_index"]]
        assert j == jj and texts["true"] == f"expl {r['vector_index']} {it.prompt}"
        fs = next(o for o in items if o.id == info["false_item"])
        fc = next(o for o in items if o.id == info["false_cross_item"])
        assert fc.category != it.category and texts["false_cross"].endswith(fc.prompt)
        assert texts["false"].endswith(fs.prompt) and texts["neutral"].endswith(RC.NEUTRAL_SENTENCE)
        if it.category == "z":  # alone in its category: falls back to cross-category, and says so
            assert not info["false_same_category"] and fs.id == fc.id
        else:
            assert info["false_same_category"] and fs.category == it.category and fs.id != it.id
    assert out == RC.grounding_texts(items, first, seed=0)


def test_grounding_verdict_rests_on_same_category_false():
    n = 40
    base = {m: np.zeros(n) for m in ("cos", "fve_nrm", "centered_cos")}
    rng = np.random.default_rng(0)
    t = 0.3 + rng.normal(0, 0.01, n)
    var = {"true": {m: t for m in base}, "false": {m: t - 0.0 + rng.normal(0, 0.01, n) for m in base},
           "false_cross": {m: t - 0.2 for m in base}}
    g = RC.grounding(base, var, n_boot=500, seed=0, clusters=np.arange(n))
    assert g["true_minus_false_cross"]["fve_nrm"]["mean"] == pytest.approx(0.2)
    assert abs(g["true_minus_false"]["fve_nrm"]["mean"]) < 0.01
    assert g["verdict"].startswith("no evidence that the AR tracks item-level claims")


# ----------------------------------------------------------------------------- directions, ladder, random


def test_negation_symmetry_is_judged_against_its_chance_rate():
    neg = A.direction_chance("neg", 4, 4, 4)
    assert neg["chance"] == pytest.approx(0.75) and neg["p"] == pytest.approx(0.75 ** 4)
    assert neg["verdict"].startswith("no evidence of negation symmetry at this n")
    assert "no count out of 4" in neg["verdict"]
    al = A.direction_chance("self", 4, 4, 4)
    assert al["p"] == pytest.approx(0.25 ** 4) and al["verdict"].startswith("evidence of alignment")
    al3 = A.direction_chance("self", 2, 4, 4)
    # P(X >= 3 | n=4, 1/4) = 0.0508 > 0.05: only 4/4 is evidence with four directions
    assert al3["verdict"].startswith("no evidence") and "4/4 would be needed" in al3["verdict"]


def test_direction_section_carries_chance_and_verdict():
    lex = {"chat": ["wiki"], "code": ["python"], "agent": ["pytest"], "reasoning": ["proof"]}
    rows = []
    for c, w in zip(lex, ["wiki", "python", "pytest", "proof"]):
        rows.append({"direction": f"{c}_vs_other", "kind": "self", "category": c, "explanation": w})
        other = "python" if c != "code" else "wiki"
        rows.append({"direction": f"NEG_{c}", "kind": "neg", "category": c, "explanation": other})
    out, _ = A._directions(rows, list(lex), lex)
    assert out["negation_symmetry"]["k"] == 4 and out["negation_symmetry"]["p"] == pytest.approx(0.75 ** 4)
    assert out["alignment"]["verdict"].startswith("evidence")


def test_ladder_gap_has_a_paired_interval():
    real = {i: 0.5 + 0.01 * i for i in range(30)}
    rung = {i: v - 0.1 for i, v in real.items()}
    g = RC.paired_item_gap(real, rung, n_boot=300, seed=0)
    assert g["mean"] == pytest.approx(0.1) and g["lo"] == pytest.approx(0.1) and g["hi"] == pytest.approx(0.1)
    assert RC.ladder_verdict("empty_explanation", g).startswith("evidence the real pair beats empty_explanation")
    assert RC.paired_item_gap(real, {100: 1.0}) is None


def test_random_gaussian_verdict_quotes_fve_nrm_seed_first():
    v = A.random_gaussian_verdict({"fve_nrm_seed": {"mean": -0.95, "lo": -0.96, "hi": -0.94},
                                   "fve_nrm": {"mean": 0.99, "lo": 0.98, "hi": 0.995}})
    assert v.index("fve_nrm_seed") < v.index("fve_nrm ") and "1 − 2/B_rv" in v
