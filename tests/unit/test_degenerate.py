"""Degenerate data is named with a typed warning, and what it leaves undefined is n/a (issue 14)."""

import math

import torch

from nlalab import metrics
from nlalab.corpus import Item
from nlalab.study import degenerate as dg


def items(cats):
    return [Item(f"{c}-{i}", c, f"p{i}") for i, c in enumerate(cats)]


def test_brv_of_identical_activations_is_degenerate():
    """Issue 14: B_rv = 5.9e-33 at a template token; fve_nrm must be n/a, not -3.8e32."""
    d = 64
    s = math.sqrt(d)
    assert dg.brv_is_degenerate(5.9e-33, s, d)
    assert dg.usable_brv(5.9e-33, s, d) is None
    assert dg.usable_brv(0.25, s, d) == 0.25
    assert dg.relative_brv(0.25, s, d) == 0.25  # with mse_scale = sqrt(d) B_rv is already on the unit scale
    # threshold: relative 1e-6 (known answer on both sides)
    assert dg.brv_is_degenerate(0.9e-6, s, d) and not dg.brv_is_degenerate(1.1e-6, s, d)
    # the scale matters: mse_scale 1 puts B_rv on 1/d of the unit scale
    assert not dg.brv_is_degenerate(1e-6, 1.0, d) and dg.brv_is_degenerate(1e-9, 1.0, d)
    for b in (0.0, -1.0, float("nan"), None):
        assert dg.brv_is_degenerate(b, s, d)
    w = dg.check_brv(5.9e-33, s, d)
    assert [x.code for x in w] == [dg.DEGENERATE_BRV] and "5.9e-33" in w[0].message and "n/a" in w[0].message
    assert dg.check_brv(0.25, s, d) == []


def test_identical_rows_from_metrics_brv():
    v = torch.randn(64)
    acts = v.repeat(5, 1) * (1 + 1e-7 * torch.randn(5, 1))
    b = metrics.brv(acts, math.sqrt(64))
    assert b < 1e-10 and dg.brv_is_degenerate(b, math.sqrt(64), 64)
    w = dg.check_identical(acts, list("abcde"), position="3")
    assert [x.code for x in w] == [dg.IDENTICAL_ACTIVATIONS] and w[0].ids == list("abcde")
    assert "all 5 activations at position 3 are identical" in w[0].message


def test_duplicate_groups_and_healthy_data():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(6, 32, generator=g)
    assert dg.check_identical(acts, list("abcdef")) == []
    acts[4] = acts[1]
    acts[5] = acts[1] * (1 + 1e-6)  # within rtol 1e-5 of the norm
    assert dg.identical_groups(acts) == [[1, 4, 5]]
    w = dg.check_identical(acts, list("abcdef"))
    assert [x.code for x in w] == [dg.DUPLICATE_ACTIVATIONS] and w[0].ids == ["b", "e", "f"]
    acts[5] = acts[1] * 1.001 + 1e-3  # 1e-3 relative apart: not identical
    assert dg.identical_groups(acts) == [[1, 4]]


def test_zero_and_nonfinite_vectors():
    acts = torch.ones(4, 8)
    acts[1] = 0
    acts[2, 3] = float("nan")
    w = dg.bad_vectors(acts, ["a", "b", "c", "d"])
    assert {x.code: x.ids for x in w} == {dg.NONFINITE_VECTORS: ["c"], dg.ZERO_VECTORS: ["b"]}
    # the bad rows are left out of the identical check: a and d alone are compared (and are identical)
    assert [x.code for x in dg.check_identical(acts, ["a", "b", "c", "d"])] == [dg.IDENTICAL_ACTIVATIONS]


def test_single_item_category():
    its = items(["chat", "chat", "code", "agent", "agent"])
    assert dg.small_categories(it.category for it in its) == {"code": 1}
    w = dg.check_categories(its)
    assert [x.code for x in w] == [dg.SINGLE_ITEM_CATEGORY] and w[0].ids == ["code-2"]
    assert dg.check_categories(items(["a", "a"])) == []


def test_prompts_too_long():
    w = dg.prompts_too_long({"a": 10, "b": 2049, "c": 2048}, 2048)
    assert [x.ids for x in w] == [["b"]] and "2048" in w[0].message
    assert dg.prompts_too_long({"a": 10**6}, None) == []

    class Cfg:
        max_position_embeddings = 8192

    class Wrapper:
        text_config = Cfg()

    assert dg.context_length(Cfg()) == 8192 and dg.context_length(Wrapper()) == 8192
    assert dg.context_length(object()) is None


def test_undefined_statistic_is_none_and_shown_na():
    assert dg.defined(float("nan")) is None and dg.defined(None) is None and dg.defined(float("inf")) is None
    assert dg.defined(0.5) == 0.5
    assert dg.show(None) == "n/a" and dg.show(float("-inf")) == "n/a" and dg.show(0.04) == "+0.040"


def test_scan_and_merge_into_results():
    its = items(["chat", "chat", "code"])
    acts = torch.randn(64).repeat(3, 1)
    b = metrics.brv(acts, 8.0)
    ws = dg.scan(acts, its, position="5", b_rv=b, mse_scale=8.0, n_tokens={"chat-0": 9}, context=8)
    codes = [w.code for w in ws]
    assert codes == [dg.IDENTICAL_ACTIVATIONS, dg.SINGLE_ITEM_CATEGORY, dg.PROMPT_TOO_LONG, dg.DEGENERATE_BRV]
    res = {"warnings": ["an older warning"]}
    dg.merge_warnings(res, ws)
    dg.merge_warnings(res, ws)  # idempotent
    assert res["warnings"][0] == "an older warning" and len(res["warnings"]) == 5
    assert [w["code"] for w in res["data_warnings"]] == codes
    g = torch.Generator().manual_seed(1)
    healthy = torch.randn(4, 64, generator=g)
    assert dg.scan(healthy, items(["a", "a", "b", "b"]), b_rv=metrics.brv(healthy, 8.0), mse_scale=8.0) == []


def test_without_fve_nrm_blanks_every_fve_nrm_and_nothing_else():
    from nlalab.study.degenerate import without_fve_nrm

    res = {"per_category": {"chat": {"fve_nrm": {"mean": -3.8e32}, "fve_nrm_seed": {"mean": 0.2}, "cos": 0.9}},
           "controls": {"seeds": {"spread": {"fve_nrm[chat]": {"mean": -1e30}, "recall": {"mean": 0.1}}},
                        "random_gaussian": {"comparison": [{"metric": "fve_nrm", "real": {"mean": -1e31}, "diff": 3.0},
                                                           {"metric": "cos", "real": {"mean": 0.1}, "diff": 0.0}]},
                        "recon_permutation": {"verdicts": {"chat": "chat: evidence ..."}}},
           "confabulation": {"fve_threshold": -2e31}}
    out = without_fve_nrm(res)
    assert out["per_category"]["chat"] == {"fve_nrm": {"mean": None}, "fve_nrm_seed": {"mean": 0.2}, "cos": 0.9}
    assert out["controls"]["seeds"]["spread"] == {"fve_nrm[chat]": {"mean": None}, "recall": {"mean": 0.1}}
    assert out["controls"]["random_gaussian"]["comparison"] == [
        {"metric": "fve_nrm", "real": None, "diff": None}, {"metric": "cos", "real": {"mean": 0.1}, "diff": 0.0}]
    assert "n/a" in out["controls"]["recon_permutation"]["verdicts"]["chat"]
    assert out["confabulation"]["fve_threshold"] is None
    v = without_fve_nrm({"grounding": {"verdict": "evidence ... true - false fve_nrm +0.2", "n": 3}})
    assert v["grounding"]["verdict"].startswith("n/a") and v["grounding"]["n"] == 3
    assert res["per_category"]["chat"]["fve_nrm"] == {"mean": -3.8e32}  # the input is not changed
