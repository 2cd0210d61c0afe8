"""Closing-tag policy: incomplete rows leave the headline figures by default (known answers)."""

from __future__ import annotations

import math

import pytest

from nlalab.study.incomplete import excluded_share, headline_and_all, headline_mask, incomplete_reasons
from nlalab.verbalize.extract import extract_explanation


def _row(cat, mse, raw, truncated=False):
    return {"category": cat, "mse_nrm": mse, **extract_explanation(raw, truncated=truncated)}


ROWS = [
    _row("a", 0.2, "<explanation>\nfine\n</explanation>"),              # complete
    _row("a", 1.8, "<explanation>\ncut off mid"),                       # no closing tag
    _row("a", 0.4, "<explanation>\nalso fine\n</explanation>"),         # complete
    _row("b", 0.6, "<explanation>\nok\n</explanation>"),                # complete
    _row("b", 2.0, "<explanation>\n\n</explanation>"),                  # empty
    _row("b", 1.0, "<explanation>\nlong</explanation> more", True),     # tags present but truncated at the cap
    _row("b", 1.6, "no tags at all"),                                   # no closing tag
]


def test_flags_from_extraction():
    assert [incomplete_reasons(r) for r in ROWS] == [
        [], ["missing_close_tag"], [], [], ["empty"], ["truncated"], ["missing_close_tag"]]
    # a row from an old run without flags counts as complete
    assert incomplete_reasons({"mse_nrm": 0.1}) == []


def test_headline_mask():
    assert headline_mask(ROWS) == [True, False, True, True, False, False, False]
    assert headline_mask(ROWS, score_incomplete=True) == [True] * 7
    assert headline_mask([]) == []


def test_excluded_share_per_category():
    s = excluded_share(ROWS, ["a", "b", "c"])
    assert list(s) == ["a", "b", "c", "all"]
    assert (s["a"]["n"], s["a"]["excluded"], s["a"]["share"]) == (3, 1, pytest.approx(1 / 3))
    assert (s["b"]["n"], s["b"]["excluded"], s["b"]["share"]) == (4, 3, 0.75)
    assert s["b"]["by_reason"] == {"missing_close_tag": 1, "truncated": 1, "empty": 1}
    assert s["c"]["n"] == 0 and math.isnan(s["c"]["share"])
    assert (s["all"]["n"], s["all"]["excluded"]) == (7, 4)
    assert s["all"]["by_reason"] == {"missing_close_tag": 2, "truncated": 1, "empty": 1}


def test_double_flag_counts_once_in_excluded():
    rows = [{"category": "a", "missing_close_tag": True, "empty": True}, {"category": "a"}]
    s = excluded_share(rows)
    assert s["a"]["excluded"] == 1 and s["a"]["by_reason"]["empty"] == 1 and s["a"]["share"] == 0.5


def test_headline_beside_all_rows():
    m = headline_and_all(ROWS, ["mse_nrm"])
    assert m["headline"]["mse_nrm"] == pytest.approx((0.2 + 0.4 + 0.6) / 3)
    assert m["all_rows"]["mse_nrm"] == pytest.approx((0.2 + 1.8 + 0.4 + 0.6 + 2.0 + 1.0 + 1.6) / 7)
    assert (m["n_headline"], m["n_all"]) == (3, 7)
    old = headline_and_all(ROWS, ["mse_nrm"], score_incomplete=True)
    assert old["headline"] == old["all_rows"]
    assert math.isnan(headline_and_all([], ["mse_nrm"])["headline"]["mse_nrm"])


def test_study_headline_leaves_incomplete_rows_out_and_reports_all_rows_beside():
    """The study's core tables: a row without a closing tag leaves the headline; the all-rows table and the
    excluded share are beside it; --score-incomplete restores every row."""
    from nlalab.study.config import RunConfig
    from nlalab.study.pipeline import _headline_analysis

    rows = []
    for i in range(8):
        cat = "a" if i < 4 else "b"
        for s in range(2):
            bad = (i == 0 and s == 1) or i == 5  # one row of item 0, both rows of item 5
            rows.append({"item_id": f"x{i}", "category": cat, "prompt": f"prompt number {i} about topic{i}",
                         "sample": s, "explanation": "topic" if not bad else "cut", "raw_output": "",
                         "cos": 0.5 if bad else 0.9, "mse_nrm": 1.0 if bad else 0.2, "fve_nrm_seed": 0.0,
                         "fve_nrm": -1.0 if bad else 0.6, "recall": 0.0, "hit": False,
                         "missing_close_tag": bad, "truncated": False, "empty": False, "cjk_smell": False})
    cfg = RunConfig(out="x", n_perm=50, n_boot=50)
    res = _headline_analysis(rows, ["a", "b"], 1.0, "test", cfg)
    assert res["per_category"]["OVERALL"]["n"] == 13 and abs(res["per_category"]["OVERALL"]["fve_nrm"]["mean"] - 0.6) < 1e-12
    assert res["per_category_all_rows"]["OVERALL"]["n"] == 16
    assert abs(res["per_category_all_rows"]["OVERALL"]["fve_nrm"]["mean"] - (13 * 0.6 - 3) / 16) < 1e-12
    share = res["incomplete"]["per_category"]
    assert (share["a"]["excluded"], share["b"]["excluded"], share["all"]["excluded"]) == (1, 2, 3)
    assert [r["headline"] for r in rows].count(False) == 3
    every = _headline_analysis(rows, ["a", "b"], 1.0, "test", RunConfig(out="x", n_perm=50, n_boot=50,
                                                                        score_incomplete=True))
    assert every["per_category"]["OVERALL"]["n"] == 16 and "per_category_all_rows" not in every
    from nlalab.study.sections import incomplete_table

    t = incomplete_table(res)
    assert t is not None and t.rows[-1][1] == "3/16 (0.19)" and incomplete_table(every) is None


def test_flags_count_every_row_even_when_the_headline_leaves_some_out():
    from nlalab.study.config import RunConfig
    from nlalab.study.pipeline import _headline_analysis

    rows = [{"item_id": f"x{i}", "category": "a" if i < 2 else "b", "prompt": f"prompt {i} topic{i}", "sample": 0,
             "explanation": "e", "raw_output": "", "cos": 0.5, "mse_nrm": 1.0, "fve_nrm_seed": 0.0, "fve_nrm": 0.1,
             "recall": 0.0, "hit": False, "missing_close_tag": i == 0, "truncated": i == 0, "empty": False,
             "cjk_smell": False} for i in range(4)]
    res = _headline_analysis(rows, ["a", "b"], 1.0, "t", RunConfig(out="x", n_perm=20, n_boot=20))
    assert res["per_category"]["OVERALL"]["n"] == 3
    assert res["flags"]["counts"]["missing_close_tag"] == 1 and res["flags"]["n"] == 4
