"""Known-answer tests for nlalab.study (analysis, directions, report): synthetic rows, no models."""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
import torch

from nlalab.corpus import by_category, load_corpus
from nlalab.scorers.keyword import content_words, keyword_hit, keyword_recall
from nlalab.stats import min_detectable_difference
from nlalab.scorers.keyword import recall_matrix
from nlalab.study.analysis import analyze, analyze_rows, opening_phrases
from nlalab.study.directions import category_directions, category_distances, most_distant_pair
from nlalab.study.report import print_summary, render_report

K = 3
CATS = ["chat", "code", "agent", "reasoning"]
ITEMS = load_corpus()
B_RV = 0.5


def make_rows(expl_fn, metric_fn=None, flag_fn=None):
    """One row per (item, sample); recall/hit scored from text exactly as the run does."""
    rows = []
    for i, it in enumerate(ITEMS):
        for k in range(K):
            e = expl_fn(it, k)
            if metric_fn is None:
                c = 0.9 + 0.001 * ((i * 7 + k * 3) % 50)
            else:
                c = metric_fn(i, it, k)
            mse = 2 * (1 - c)
            row = dict(
                item_id=it.id, category=it.category, prompt=it.prompt, sample=k, explanation=e, raw_output=e,
                cos=c, mse_nrm=mse, fve_nrm_seed=2 * c - 1, fve_nrm=1 - mse / B_RV,
                recall=keyword_recall(it.prompt, e), hit=keyword_hit(it.prompt, e), n_new_tokens=20,
                truncated=False, missing_close_tag=False, empty=False, cjk_smell=False,
            )
            if flag_fn is not None:
                row.update(flag_fn(i, it, k))
            rows.append(row)
    return rows


def run(rows, **kw):
    kw.setdefault("n_perm", 1000)
    kw.setdefault("n_boot", 500)
    return analyze_rows(rows, categories=CATS, b_rv=B_RV, b_rv_source="unit-test reference", **kw)


def derangement():
    """Fixed within-category derangement: item i of a category gets the prompt of item i+1."""
    out = {}
    for items in by_category(ITEMS).values():
        for j, it in enumerate(items):
            out[it.id] = items[(j + 1) % len(items)].prompt
    return out


# ----------------------------------------------------------------------------- permutation (seed §4.1)


def test_explanations_equal_prompts_give_recall_one_and_a_large_significant_gap():
    n_perm = 1000
    res = run(make_rows(lambda it, k: it.prompt), n_perm=n_perm)
    for c in CATS + ["OVERALL"]:
        r = res["per_category"][c]["recall"]
        assert r["mean"] == 1.0 and r["lo"] == 1.0 and r["hi"] == 1.0
        assert res["per_category"][c]["hit"]["mean"] == 1.0
    o = res["controls"]["recall_permutation"]["overall"]
    assert o["real"] == pytest.approx(1.0)
    assert o["gap_cross"] > 0.5 and o["gap_within"] > 0.5
    assert o["floor_cross"]["mean"] < o["floor_within"]["mean"] < 0.5  # category vocabulary helps a bit
    assert o["p_cross"] <= 2 / (n_perm + 1)
    assert o["p_within"] <= 2 / (n_perm + 1)
    for c in CATS:
        pc = res["controls"]["recall_permutation"]["per_category"][c]
        assert pc["real"] == pytest.approx(1.0)
        assert pc["p_within"] <= 2 / (n_perm + 1)
        assert pc["gap_within"] == pytest.approx(1.0 - pc["floor_within"]["mean"])


def _expected_within_floor(expl_of):
    """Exact expectation of the within-category floor: for each item, the mean recall of its prompt
    against every *other* item's explanation set of the same category (the floor is over derangements:
    no item keeps its own set), averaged over items. Plain python, no analysis code."""
    vals = []
    for items in by_category(ITEMS).values():
        for it in items:
            vals.append(np.mean([keyword_recall(it.prompt, expl_of[o.id]) for o in items if o.id != it.id]))
    return float(np.mean(vals))


def test_derangement_within_category_has_no_signal_above_the_within_floor():
    der = derangement()
    res = run(make_rows(lambda it, k: der[it.id]))
    o = res["controls"]["recall_permutation"]["overall"]
    # No item-specific signal: not significant, and the real pairing is not above the floor.
    assert o["p_within"] > 0.05
    assert o["gap_within"] < 0.05
    # The floor is the derangement expectation. Because each prompt's own text sits in exactly one
    # other item's explanation set, a random derangement re-finds it with probability 1/(n_c - 1), so the
    # exact expected gap is about -(1 - offdiag)/(n_c - 1), not 0; check the analysis hits it.
    expected_floor = _expected_within_floor(der)
    assert o["floor_within"]["mean"] == pytest.approx(expected_floor, abs=0.006)
    real = np.mean([keyword_recall(it.prompt, der[it.id]) for it in ITEMS])
    assert o["real"] == pytest.approx(real, abs=1e-12)
    assert o["gap_within"] == pytest.approx(real - expected_floor, abs=0.006)
    assert -0.15 < o["gap_within"] < -0.03


def test_exchangeable_category_vocabulary_gives_gap_near_zero():
    # Explanations built from random words of the category's prompt vocabulary, independent of the
    # item: real and shuffled pairings have the same expectation, so the gap must be ~0.
    rng = np.random.default_rng(7)
    pools = {c: sorted(set().union(*(content_words(i.prompt) for i in its))) for c, its in by_category(ITEMS).items()}
    expl = {(it.id, k): " ".join(rng.choice(pools[it.category], size=6, replace=False)) for it in ITEMS for k in range(K)}
    res = run(make_rows(lambda it, k: expl[(it.id, k)]))
    o = res["controls"]["recall_permutation"]["overall"]
    assert abs(o["gap_within"]) < 0.05
    assert o["p_within"] > 0.05
    assert o["floor_within"]["mean"] > 0.05  # the floor itself is not trivially zero


def test_recall_matrix_matches_keyword_recall():
    prompts = [it.prompt for it in ITEMS[:10]] + ["What is 2+2?"]
    expl = [it.prompt for it in ITEMS[5:15]] + ["the sky is blue because of Rayleigh scattering"]
    R, valid = recall_matrix(prompts, expl)
    for i, p in enumerate(prompts):
        for j, e in enumerate(expl):
            r = keyword_recall(p, e)
            if r is None:
                assert not valid[i]
            else:
                assert R[i, j] == pytest.approx(r, abs=1e-12)


# ----------------------------------------------------------------------------- per-category (seed §3.1)


def _metric_rows():
    rng = np.random.default_rng(3)
    cosv = {(it.id, k): float(rng.uniform(0.8, 1.0)) for it in ITEMS for k in range(K)}
    words = ["alpha", "capital", "python", "function", "prove", "repository", "tests", "brazil"]
    expl = {(it.id, k): " ".join(rng.choice(words, size=int(rng.integers(1, 8)))) for it in ITEMS for k in range(K)}
    flags = {(it.id, k): bool(rng.random() < 0.3) for it in ITEMS for k in range(K)}
    rows = make_rows(
        lambda it, k: expl[(it.id, k)],
        metric_fn=lambda i, it, k: cosv[(it.id, k)],
        flag_fn=lambda i, it, k: {"truncated": flags[(it.id, k)]},
    )
    # Some undefined recall (prompt without content words) and a NaN fve_nrm_seed.
    rows[0]["recall"], rows[0]["hit"] = None, None
    rows[5]["fve_nrm_seed"] = float("nan")
    return rows


def test_per_category_means_and_spread_match_numpy():
    rows = _metric_rows()
    res = run(rows)
    metrics = ["cos", "fve_nrm", "fve_nrm_seed", "mse_nrm", "recall", "hit", "length_words", "truncated"]

    def val(r, m):
        if m == "length_words":
            return len(r["explanation"].split())
        v = r[m]
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    expected = {}
    for c in CATS + ["OVERALL"]:
        sel = [r for r in rows if c == "OVERALL" or r["category"] == c]
        e = res["per_category"][c]
        assert e["n"] == len(sel)
        assert e["n_items"] == len({r["item_id"] for r in sel})
        for m in metrics:
            vals = np.array([val(r, m) for r in sel if val(r, m) is not None], dtype=float)
            expected[(c, m)] = vals.mean()
            got = e[m]
            assert got["mean"] == pytest.approx(vals.mean(), abs=1e-12), (c, m)
            assert got["n"] == vals.size
            assert got["n_clusters"] == len({r["item_id"] for r in sel if val(r, m) is not None})
            assert got["lo"] <= got["mean"] <= got["hi"]
    for m in metrics:
        means = [expected[(c, m)] for c in CATS]
        assert res["spread"][m] == pytest.approx(max(means) - min(means), abs=1e-12)
    assert res["n_samples"] == len(rows) and res["n_items"] == len(ITEMS) and res["k"] == K
    json.dumps(res, allow_nan=False)


def test_cluster_bootstrap_is_wider_than_rows_when_samples_are_identical():
    # K identical samples per item: the cluster CI must reflect 50 items, not 150 rows, so it is
    # wider than a naive row bootstrap (by ~sqrt(K) = 1.73).
    from nlalab.stats import bootstrap_ci

    rows = make_rows(lambda it, k: it.prompt, metric_fn=lambda i, it, k: 0.8 + 0.004 * i)
    res = run(rows, n_boot=2000)
    e = res["per_category"]["OVERALL"]["cos"]
    naive = bootstrap_ci([r["cos"] for r in rows], n_boot=2000, seed=0)
    assert (e["hi"] - e["lo"]) > 1.3 * (naive.hi - naive.lo)


# ----------------------------------------------------------------------------- stability (seed §3.4)


def test_stability_identical_samples_have_zero_within_std():
    rows = make_rows(lambda it, k: it.prompt, metric_fn=lambda i, it, k: 0.8 + 0.003 * i)
    res = run(rows)
    for c in CATS + ["OVERALL"]:
        for m in ("cos", "fve_nrm", "recall"):
            assert res["stability"][c][m]["within"] == pytest.approx(0.0, abs=1e-15)
        item_means = [0.8 + 0.003 * i for i, it in enumerate(ITEMS) if c == "OVERALL" or it.category == c]
        assert res["stability"][c]["cos"]["cross"] == pytest.approx(np.std(item_means, ddof=1), abs=1e-12)


def test_stability_within_std_known_answer():
    # cos = base_i + {-d, 0, +d}: sample std (ddof=1) over the 3 samples = d for every item (the old
    # ddof=0 mean of stds gave d * sqrt(2/3), biased low; the cross std already used ddof=1).
    d = 0.01
    rows = make_rows(lambda it, k: it.prompt, metric_fn=lambda i, it, k: 0.9 + (k - 1) * d)
    res = run(rows)
    assert res["stability"]["chat"]["cos"]["within"] == pytest.approx(d, abs=1e-12)
    assert res["stability"]["chat"]["cos"]["ddof"] == 1
    assert res["stability"]["chat"]["cos"]["cross"] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- directions (seed §4.3)

LEX = {
    "chat": ["article", "wiki", "city"],
    "code": ["python", "function", "snippet"],
    "agent": ["repository", "pytest", "refactor"],
    "reasoning": ["proof", "theorem", "puzzle"],
}


def _dir_rows(spec):
    rows = []
    for name, kind, cat, texts in spec:
        for k, t in enumerate(texts):
            rows.append({"direction": name, "kind": kind, "category": cat, "sample": k, "explanation": t,
                         "raw_output": t})
    return rows


DIR_SPEC = [
    ("chat_vs_other", "self", "chat", ["A wiki article about a city", "An article", "Plain text"]),
    ("code_vs_other", "self", "code", ["Python function snippet", "python code", "A function"]),
    ("agent_vs_other", "self", "agent", ["Python function", "python snippet", "repository"]),  # -> code ✗
    ("reasoning_vs_other", "self", "reasoning", ["A proof of a theorem", "puzzle", "theorem"]),
    ("NEG_chat_vs_other", "neg", "chat", ["python function", "snippet", "x"]),  # code: away ✓
    ("NEG_code_vs_other", "neg", "code", ["nothing here", "none", "zilch"]),  # no hits: ✗
    ("NEG_agent_vs_other", "neg", "agent", ["pytest repository", "refactor", "pytest"]),  # agent itself ✗
    ("NEG_reasoning_vs_other", "neg", "reasoning", ["wiki", "city article", "an article"]),  # chat ✓
    ("chat_minus_agent", "cross", "chat", ["wiki article", "city", "article"]),  # ✓
    ("agent_minus_chat", "cross", "agent", ["python pytest", "function repository", "x"]),  # tie -> None ✗
]


def test_direction_analysis_alignment_and_negation_counts():
    res = run(make_rows(lambda it, k: it.prompt), direction_rows=_dir_rows(DIR_SPEC), lexicon=LEX)
    d = res["controls"]["directions"]
    assert d["alignment"]["k"] == 3 and d["alignment"]["n"] == 4 and d["alignment"]["text"] == "3/4"
    assert d["negation_symmetry"]["k"] == 2 and d["negation_symmetry"]["n"] == 4
    assert d["cross"]["k"] == 1 and d["cross"]["n"] == 2
    by = {e["direction"]: e for e in d["rows"]}
    assert by["chat_vs_other"]["mean_hits"] == pytest.approx({"chat": 4 / 3, "code": 0, "agent": 0, "reasoning": 0})
    assert by["agent_vs_other"]["top"] == "code" and not by["agent_vs_other"]["ok"]
    assert by["NEG_code_vs_other"]["top"] is None and not by["NEG_code_vs_other"]["ok"]
    assert by["NEG_chat_vs_other"]["top"] == "code" and by["NEG_chat_vs_other"]["ok"]
    assert by["agent_minus_chat"]["top"] is None
    assert [e["direction"] for e in d["rows"]] == [s[0] for s in DIR_SPEC]


def test_direction_rows_with_unknown_category_are_refused():
    bad = _dir_rows([("x_vs_other", "self", "poetry", ["wiki"])])
    with pytest.raises(ValueError, match="unknown category"):
        run(make_rows(lambda it, k: it.prompt), direction_rows=bad, lexicon=LEX)
    bad = _dir_rows([("x", "sideways", "chat", ["wiki"])])
    with pytest.raises(ValueError, match="kind"):
        run(make_rows(lambda it, k: it.prompt), direction_rows=bad, lexicon=LEX)


def test_category_directions_ten_directions_and_algebra():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(50, 16, generator=g, dtype=torch.float64) * 10
    labels = [it.category for it in ITEMS]
    dirs = category_directions(acts, labels, CATS)
    assert len(dirs) == 10
    assert [d["kind"] for d in dirs].count("self") == 4
    assert [d["kind"] for d in dirs].count("neg") == 4
    assert [d["kind"] for d in dirs].count("cross") == 2
    by = {d["name"]: d for d in dirs}
    a = acts.numpy()
    lab = np.array(labels)
    for c in CATS:
        v, nv = by[f"{c}_vs_other"]["vector"], by[f"NEG_{c}_vs_other"]["vector"]
        assert v.dtype == torch.float32 and v.shape == (16,)
        assert torch.equal(v + nv, torch.zeros(16))
        exp = a[lab == c].mean(0) - a.mean(0)
        assert np.allclose(v.numpy(), exp, atol=1e-5)
        assert by[f"{c}_vs_other"]["category"] == c and by[f"NEG_{c}_vs_other"]["category"] == c
    cross = [d for d in dirs if d["kind"] == "cross"]
    assert torch.equal(cross[0]["vector"], -cross[1]["vector"])
    x, y = most_distant_pair(acts, labels, CATS)
    assert cross[0]["name"] == f"{x}_minus_{y}" and cross[0]["category"] == x
    assert cross[1]["name"] == f"{y}_minus_{x}" and cross[1]["category"] == y
    assert np.allclose(cross[0]["vector"].numpy(), a[lab == x].mean(0) - a[lab == y].mean(0), atol=1e-5)


def test_most_distant_pair_uses_unit_normalised_means():
    # A and B point the same way (B 100x longer): far apart raw, identical after normalising.
    # C and D point in opposite directions: unit distance 2, the largest.
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    jit = torch.tensor([0.0, 0.0, 0.01])
    acts = torch.stack([e1 + jit, e1 - jit, 100 * (e1 + jit), 100 * (e1 - jit), e2 + jit, e2 - jit, -e2 + jit, -e2 - jit])
    labels = ["A", "A", "B", "B", "C", "C", "D", "D"]
    cats = ["A", "B", "C", "D"]
    assert most_distant_pair(acts, labels, cats) == ("C", "D")
    dist = category_distances(acts, labels, cats)
    assert dist[("A", "B")] == pytest.approx(0.0, abs=1e-9)
    assert dist[("C", "D")] == pytest.approx(2.0, abs=1e-3)
    names = [d["name"] for d in category_directions(acts, labels, cats) if d["kind"] == "cross"]
    assert names == ["C_minus_D", "D_minus_C"]


def test_category_directions_errors():
    acts = torch.randn(4, 8)
    with pytest.raises(ValueError, match="no items"):
        category_directions(acts, ["a", "a", "b", "b"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="at least 2"):
        category_directions(acts, ["a"] * 4, ["a"])
    with pytest.raises(ValueError, match="one label per row"):
        category_directions(acts, ["a", "b"], ["a", "b"])


# ----------------------------------------------------------------------------- confabulation (seed §3.5)


def test_confabulation_picks_exactly_the_constructed_rows():
    per_cat = by_category(ITEMS)
    target = {}  # (item_id, sample) -> fve_nrm
    for c, its in per_cat.items():
        n_t = 4 if c == "code" else 2  # code has 4 targets, only the top 3 must come back
        for j in range(n_t):
            target[(its[j].id, 0)] = 0.99 - 0.01 * j
    decoy = {(its[-1].id, 1) for its in per_cat.values()}  # low fve, low recall: below the threshold

    def expl(it, k):
        return "zzzz qqqq unrelated" if (it.id, k) in target or (it.id, k) in decoy else it.prompt

    rows = make_rows(expl)
    for r in rows:
        key = (r["item_id"], r["sample"])
        r["fve_nrm"] = target.get(key, 0.2 if key in decoy else 0.9)
    res = run(rows, confab_per_category=3)
    cf = res["confabulation"]
    assert cf["fve_threshold"] == pytest.approx(0.9)
    assert cf["n_candidates"] == len(target)
    for c, its in per_cat.items():
        got = [(e["item_id"], e["sample"]) for e in cf["per_category"][c]]
        want = sorted([k for k in target if k[0].startswith(c)], key=lambda k: -target[k])[:3]
        assert got == want
        for e in cf["per_category"][c]:
            assert e["prompt"] == next(i.prompt for i in ITEMS if i.id == e["item_id"])
            assert e["explanation"] == "zzzz qqqq unrelated" and e["recall"] == 0.0


# ----------------------------------------------------------------------------- random Gaussian, power, flags


def _random_rows():
    texts = ["Structured article format with facts."] * 4 + ["Formal wiki article structure", "Game description"]
    rows = []
    for v, t in enumerate(texts):
        c = 0.01 * (v - 2)
        rows.append(dict(vector_index=v, sample=0, explanation=t, raw_output=t, cos=c, mse_nrm=2 * (1 - c),
                         fve_nrm_seed=2 * c - 1, fve_nrm=1 - 2 * (1 - c) / B_RV, recall=0.0, hit=False,
                         paired_item_id=ITEMS[v].id, truncated=False, missing_close_tag=False, empty=False,
                         cjk_smell=False))
    return rows


def test_random_gaussian_section_and_format_attractor():
    real = make_rows(lambda it, k: it.prompt)
    rnd = _random_rows()
    res = run(real, random_rows=rnd)
    rg = res["controls"]["random_gaussian"]
    assert rg["n"] == 6 and rg["ci_method"] == "bootstrap over rows"
    assert rg["metrics"]["cos"]["mean"] == pytest.approx(np.mean([r["cos"] for r in rnd]))
    assert rg["metrics"]["fve_nrm"]["mean"] == pytest.approx(np.mean([r["fve_nrm"] for r in rnd]))
    cmp = {c["metric"]: c for c in rg["comparison"]}
    assert cmp["recall"]["real"]["mean"] == 1.0 and cmp["recall"]["random"]["mean"] == 0.0
    assert cmp["cos"]["diff"] == pytest.approx(res["per_category"]["OVERALL"]["cos"]["mean"] - rg["metrics"]["cos"]["mean"])
    top = rg["format_templates"]["random"]["first3"]["top"][0]
    assert top == {"phrase": "structured article format", "count": 4, "share": pytest.approx(4 / 6)}
    assert rg["format_templates"]["random"]["first5"]["top"][0]["phrase"] == "structured article format with facts"


def test_opening_phrases_strip_punctuation_and_case():
    out = opening_phrases(["Educational/health article format: a list", "educational/health Article format", ""], 3)
    assert out["n"] == 2 and out["top"][0] == {"phrase": "educational/health article format", "count": 2, "share": 1.0}


def test_power_uses_pooled_within_category_std_of_item_means():
    rows = _metric_rows()
    res = run(rows)
    ss, dof = 0.0, 0
    for c in CATS:
        means = [np.mean([r["fve_nrm"] for r in rows if r["item_id"] == it.id]) for it in ITEMS if it.category == c]
        ss += np.var(means, ddof=1) * (len(means) - 1)
        dof += len(means) - 1
    sd = math.sqrt(ss / dof)
    p = res["power"]
    assert p["n_per_group"] == 12
    assert p["metrics"]["fve_nrm"]["pooled_std"] == pytest.approx(sd, rel=1e-12)
    assert p["metrics"]["fve_nrm"]["mdd"] == pytest.approx(min_detectable_difference(sd, 12), rel=1e-12)


def test_flags_counts_and_cjk_warning():
    rows = make_rows(lambda it, k: it.prompt, flag_fn=lambda i, it, k: {"cjk_smell": i % 2 == 0, "empty": k == 0})
    res = run(rows)
    assert res["flags"]["counts"]["cjk_smell"] == 75 and res["flags"]["counts"]["empty"] == 50
    assert any("injection likely failed" in w for w in res["flags"]["warnings"])
    assert "injection likely failed" in res["flags"]["warning"]
    assert res["flags"]["rates"]["cjk_smell"] == pytest.approx(0.5)
    ok = run(make_rows(lambda it, k: it.prompt))
    assert ok["flags"]["warnings"] == [] and ok["flags"]["warning"] is None
    assert ok["flags"]["counts"]["cjk_smell"] == 0


# ----------------------------------------------------------------------------- validation, determinism, timing


def test_validation_errors():
    with pytest.raises(ValueError, match="empty"):
        analyze([], categories=CATS, b_rv=B_RV, b_rv_source="x")
    rows = make_rows(lambda it, k: it.prompt)
    rows[3] = dict(rows[3], category="poetry")
    with pytest.raises(ValueError, match="unknown category 'poetry'"):
        run(rows)
    rows = make_rows(lambda it, k: it.prompt)
    rows.append(dict(rows[0]))
    with pytest.raises(ValueError, match="duplicate"):
        run(rows)
    rows = make_rows(lambda it, k: it.prompt)
    with pytest.raises(ValueError, match="b_rv"):
        analyze(rows, categories=CATS, b_rv=0.0, b_rv_source="x")


def test_deterministic_and_json_serialisable():
    rows = _metric_rows()
    a = run(rows, random_rows=_random_rows(), direction_rows=_dir_rows(DIR_SPEC), lexicon=LEX, n_perm=200)
    b = run(rows, random_rows=_random_rows(), direction_rows=_dir_rows(DIR_SPEC), lexicon=LEX, n_perm=200)
    assert json.dumps(a, allow_nan=False, sort_keys=True) == json.dumps(b, allow_nan=False, sort_keys=True)
    c = run(rows, n_perm=200, seed=7)
    assert c["controls"]["recall_permutation"]["overall"]["floor_within"] != a["controls"]["recall_permutation"]["overall"]["floor_within"]


def test_timing_150_rows_1000_permutations_under_3s():
    rows = _metric_rows()
    t0 = time.perf_counter()
    analyze(rows, categories=CATS, b_rv=B_RV, b_rv_source="x", n_perm=1000)  # default n_boot=2000
    assert time.perf_counter() - t0 < 3.0


# ----------------------------------------------------------------------------- report


META = {"pair": "test/pair-L20", "layer": 20, "corpus": "seed50_v1", "config": {"seed": 42, "k": 3}}


def _table_rows(md: str, first_header: str) -> dict[str, list[str]]:
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    out = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip("|").split(" | ")]
        out[cells[0]] = cells
    return out


def test_report_tables_match_results_and_missing_controls_say_not_run():
    res = run(_metric_rows())
    md = render_report(res, META)
    for s in ("test/pair-L20", "seed50_v1", "unit-test reference", "| OVERALL |", "| Spread (max − min) |"):
        assert s in md
    for c in CATS:
        assert f"| {c} |" in md
    assert "Random-Gaussian control (seed §4.2): not run" in md
    assert "Direction-injection control (seed §4.3): not run" in md
    table = _table_rows(md, "Category")
    assert set(CATS + ["OVERALL", "Spread (max − min)"]) <= set(table)
    cols = ["cos", "fve_nrm", "fve_nrm_seed", "recall", "hit"]
    for c in CATS + ["OVERALL"]:
        e = res["per_category"][c]
        assert table[c][1] == f"{e['n']} ({e['n_items']} items)"
        for j, m in enumerate(cols):
            est = e[m]
            # n= is shown only where a metric leaves rows out
            want = f"{est['mean']:.3f} [{est['lo']:.3f}, {est['hi']:.3f}]" + ("" if est["n"] == e["n"] else f" n={est['n']}")
            assert table[c][2 + j] == want, (c, m)
            assert re.fullmatch(r"-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]( n=\d+)?", table[c][2 + j])
    for j, m in enumerate(cols):
        assert table["Spread (max − min)"][2 + j] == f"{res['spread'][m]:.3f}"
    o = res["controls"]["recall_permutation"]["overall"]
    assert f"| Real | {o['real']:.3f}" in md
    assert f"{o['gap_cross']:+.3f}" in md


def test_report_with_all_controls_and_summary():
    der = derangement()
    res = run(make_rows(lambda it, k: der[it.id]), random_rows=_random_rows(),
              direction_rows=_dir_rows(DIR_SPEC), lexicon=LEX)
    md = render_report(res, META)
    assert "not run" not in md.split("## Item-specific")[0]  # reconstruction controls come from the pipeline
    assert "Alignment (self): 3/4" in md and "Negation symmetry: 2/4" in md
    assert '"structured article format"' in md
    assert "| agent_vs_other |" in md and "code ✗ (should be agent)" in md
    # Confabulation quotes are verbatim.
    ex = next(e for es in res["confabulation"]["per_category"].values() for e in es)
    assert "> " + ex["explanation"] in md and "> " + ex["prompt"] in md
    s = print_summary(res)
    assert "OVERALL" in s and "alignment 3/4" in s and len(s.splitlines()) < 25
