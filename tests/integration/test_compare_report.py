"""`compare_runs` on three fixture runs (seed §3.2 table), pattern rules, corpus mismatch, and the HTML report in
headless chromium.

The fixture pairs are untrained, so their explanations are noise and keyword recall is ~0 everywhere. To check
the recall rows against something non-trivial, the three real runs are also copied with *doctored* explanations
(each replaced by a quote of part of its prompt, a different share per category and per run), re-scored
(recall, hit) and re-analysed with the pipeline's own ``analyze`` — exactly what the score stage of
``nlalab run`` does. Reconstruction numbers (cos, fve) stay the real ones.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nlalab.report.compare import (classify_pattern, compare_runs, to_csv, to_json, to_markdown,
                                   to_terminal)
from nlalab.scorers.keyword import keyword_hit, keyword_recall, lexicon_hits, load_lexicon, top_category
from nlalab.study.analysis import analyze_rows
from nlalab.study.config import RunConfig
from nlalab.study.pipeline import run_study
from nlalab.rundir.io import atomic_write_json, write_jsonl
from nlalab.testing import torch_threads

FAST = dict(k=2, max_new_tokens=12, n_random=4, n_perm=200, n_boot=200, limit_per_category=4, progress=False)
ARCH_SEEDS = (("qwen2", 0), ("gemma3_text", 1), ("llama", 2))
LEVELS = {"chat": 0.9, "code": 0.5, "agent": 0.1, "reasoning": 0.4}
NAMES = ["V1", "V2", "V3"]


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def doctor(src: Path, dst: Path, scale: float) -> Path:
    shutil.copytree(src, dst)
    rows = read_jsonl(dst / "samples.jsonl")
    for r in rows:
        words = r["prompt"].split()
        frac = min(1.0, LEVELS[r["category"]] * scale) * (0.5 if r["sample"] == 1 else 1.0)
        e = f'Structured article format about "{" ".join(words[:max(1, int(len(words) * frac))])}" with steps'
        r.update(explanation=e, recall=keyword_recall(r["prompt"], e), hit=keyword_hit(r["prompt"], e))
    res = json.loads((dst / "results.json").read_text())
    st = res["settings"]
    new = analyze_rows(rows, categories=res["categories"], b_rv=res["b_rv"], b_rv_source=res["b_rv_source"],
                  random_rows=read_jsonl(dst / "controls" / "random_gaussian.jsonl"),
                  direction_rows=read_jsonl(dst / "controls" / "directions.jsonl"),
                  n_perm=st["n_perm"], n_boot=st["n_boot"], seed=st["seed"])
    new.update(provenance=res["provenance"], mse_scale=res["mse_scale"], capture=res["capture"],
               schema_version=res["schema_version"])
    new["controls"] = {**res["controls"], **{k: v for k, v in new["controls"].items() if v}}
    write_jsonl(dst / "samples.jsonl", rows)
    atomic_write_json(dst / "results.json", new)
    return dst


@pytest.fixture(scope="module")
def runs(fixture_pairs, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_runs")
    real = []
    with torch_threads(1):  # tiny models: threads only add OpenMP spin-waits on a shared 2-core box
        for arch, seed in ARCH_SEEDS:
            p = fixture_pairs[arch]
            out = root / f"real_{arch}"
            run_study(RunConfig(av=str(p.av), ar=str(p.ar), target=str(p.target), out=str(out), seed=seed, **FAST))
            real.append(out)
    doctored = [doctor(d, root / f"doc_{i}", s) for i, (d, s) in enumerate(zip(real, (0.6, 0.9, 1.0)))]
    csv_path = root / "other_corpus.csv"
    csv_path.write_text("id,category,prompt\n" + "".join(
        f"{c}-{j},{c},\"Another {c} prompt number {j} about lighthouses and parsers\"\n"
        for c in ("chat", "code", "agent", "reasoning") for j in range(2)))
    p = fixture_pairs["qwen2"]
    other = root / "other_corpus_run"
    with torch_threads(1):
        run_study(RunConfig(av=str(p.av), ar=str(p.ar), target=str(p.target), out=str(other), corpus=str(csv_path),
                            seed=3, **FAST))
    return {"real": real, "doctored": doctored, "other": other}


# ----------------------------------------------------------------------------- independent computation


def _mean(xs):
    xs = [float(x) for x in xs if x is not None]
    return sum(xs) / len(xs)


def independent(run: Path) -> dict:
    rows = read_jsonl(run / "samples.jsonl")
    cats = json.loads((run / "config.json").read_text())["corpus"]["categories"]
    out = {m: _mean(r[m] for r in rows) for m in ("fve_nrm", "fve_nrm_seed", "cos", "recall", "hit")}
    for m in ("fve_nrm", "recall"):
        cm = [_mean(r[m] for r in rows if r["category"] == c) for c in cats]
        out[f"spread.{m}"] = max(cm) - min(cm)
    for c in cats:
        out[f"recall.{c}"] = _mean(r["recall"] for r in rows if r["category"] == c)
    rnd = read_jsonl(run / "controls" / "random_gaussian.jsonl")
    for m in ("fve_nrm", "fve_nrm_seed", "cos"):
        out[f"random.{m}"] = _mean(r[m] for r in rnd)
    # Expected cross-category floor: mean recall over all (prompt, other item's explanation set) pairs
    # (every prompt has content words and every item K rows, so it is exact in expectation).
    prompts = {r["item_id"]: r["prompt"] for r in rows}
    # over derangements (issue 15): every (prompt, other item's explanation) pair, the own pair left out
    out["floor_cross_expected"] = _mean(keyword_recall(p, r["explanation"]) for i, p in prompts.items() for r in rows
                                        if r["item_id"] != i)
    lex = load_lexicon()
    groups: dict[str, list] = {}
    for r in read_jsonl(run / "controls" / "directions.jsonl"):
        groups.setdefault(r["direction"], []).append(r)
    k = n = 0
    for name, rs in groups.items():
        if rs[0]["kind"] != "self":
            continue
        hits = [lexicon_hits(r["explanation"], lex) for r in rs]
        mean_hits = {c: float(np.mean([h[c] for h in hits])) for c in lex}
        n += 1
        k += top_category(mean_hits) == rs[0]["category"]
    out["alignment"] = (k, n)
    out["item"] = {m: {} for m in ("fve_nrm", "cos", "recall")}
    for m in out["item"]:
        acc: dict[str, list] = {}
        for r in rows:
            if r[m] is not None:
                acc.setdefault(r["item_id"], []).append(r[m])
        out["item"][m] = {i: float(np.mean(v)) for i, v in acc.items()}
    return out


# ----------------------------------------------------------------------------- compare


def test_compare_reproduces_seed_table_structure_and_independent_numbers(runs):
    dirs = runs["doctored"]
    cmp = compare_runs(dirs, NAMES, n_boot=500, seed=0)
    rows = {r["key"]: r for r in cmp["rows"]}
    for key in ("fve_nrm", "fve_nrm_seed", "spread.fve_nrm", "recall", "spread.recall", "perm.gap_cross",
                "perm.gap_within", "random.fve_nrm", "random.cos", "recall.chat", "recall.agent",
                "directions.alignment", "diff.fve_nrm", "diff.recall", "diff.cos"):
        assert key in rows, key
    assert cmp["same_corpus"] and all(p["paired"] for p in cmp["pairing"])
    # three different fixture models: their B_rv differ (stated), nothing else does
    assert {m["key"] for m in cmp["mismatches"]} <= {"b_rv", "mse_scale"}
    assert all("B_rv value" in w or "mse_scale" in w for w in cmp["warnings"])
    ind = [independent(d) for d in dirs]
    for key in ("fve_nrm", "fve_nrm_seed", "cos", "recall", "hit", "spread.fve_nrm", "spread.recall",
                "recall.chat", "recall.code", "recall.agent", "recall.reasoning", "random.fve_nrm",
                "random.fve_nrm_seed", "random.cos"):
        vals = rows[key]["values"]
        for i in range(3):
            assert vals[i]["mean"] == pytest.approx(ind[i][key], abs=1e-9), (key, i)
            assert vals[i]["lo"] <= vals[i]["mean"] + 1e-12 and vals[i]["mean"] <= vals[i]["hi"] + 1e-12, (key, i)
            assert vals[i]["n"] >= 8
        # the pattern column is the tested-step rule: every step carries its Holm-adjusted p
        pat = rows[key]["pattern"]
        assert pat["kind"] in ("flat", "monotonic_up", "monotonic_down", "saturating_up", "saturating_down",
                               "peak", "dip", "non_monotonic"), (key, pat)
        assert len(pat["steps"]) == 2 and all(st["p_holm"] >= st["p"] for st in pat["steps"])
        assert pat["kind"] != "flat" or not any(st["counts"] for st in pat["steps"])
    assert [v["n"] for v in rows["fve_nrm"]["values"]] == [32, 32, 32]
    assert [v["n"] for v in rows["recall.chat"]["values"]] == [8, 8, 8]
    # recall is non-trivial and grows with the doctoring scale
    assert 0.1 < ind[0]["recall"] < ind[1]["recall"] <= ind[2]["recall"]
    for i in range(3):
        fc = rows["perm.floor_cross"]["values"][i]
        assert fc["mean"] == pytest.approx(ind[i]["floor_cross_expected"], abs=0.015)
        gap = rows["perm.gap_cross"]["values"][i]
        assert gap["mean"] == pytest.approx(ind[i]["recall"] - fc["mean"], abs=1e-9)
        assert gap["mean"] > 0.1 and gap["p"] <= 2 / 201 and gap["n"] == 16
        a = rows["directions.alignment"]["values"][i]
        assert (a["k"], a["n"]) == ind[i]["alignment"] and a["text"] == f"{a['k']}/{a['n']}"
    # paired differences of consecutive runs over item-level means
    for j, d in enumerate(cmp["differences"]):
        assert d["paired"] and (d["from"], d["to"]) == (NAMES[j], NAMES[j + 1])
        for m in ("fve_nrm", "cos", "recall"):
            a, b = ind[j]["item"][m], ind[j + 1]["item"][m]
            want = float(np.mean([b[i] - a[i] for i in a]))
            e = d["metrics"][m]
            assert e["mean"] == pytest.approx(want, abs=1e-9) and e["n"] == 16
            assert e["lo"] <= e["mean"] <= e["hi"] and 0 < e["p"] <= 1
            assert rows[f"diff.{m}"]["values"][j + 1] == e
    assert rows["diff.recall"]["values"][0] is None


def test_compare_on_raw_fixture_runs_and_renderers(runs):
    cmp = compare_runs(runs["real"], n_boot=200)
    assert cmp["names"] == [d.name for d in runs["real"]]
    ind = [independent(d) for d in runs["real"]]
    fve = next(r for r in cmp["rows"] if r["key"] == "fve_nrm")
    assert [v["mean"] for v in fve["values"]] == pytest.approx([x["fve_nrm"] for x in ind], abs=1e-9)
    assert cmp["runs"][0]["seed"] == 0 and cmp["runs"][2]["seed"] == 2
    md = to_markdown(cmp)
    assert md.count("\n| ") >= len(cmp["rows"]) + 2 and "| Metric |" in md and "Pattern" in md
    assert "n=32" in md and "B_rv" in md and "per-vector variance" in md
    table = list(csv.reader(io.StringIO(to_csv(cmp))))
    assert len(table) == 1 + len(cmp["warnings"]) + len(cmp["rows"]) and table[0][-2:] == ["pattern", "pattern_kind"]
    assert float(table[1 + len(cmp["warnings"])][3]) == pytest.approx(fve["values"][0]["mean"])
    assert json.loads(to_json(cmp))["rows"][0]["key"] == "fve_nrm"
    term = to_terminal(cmp)
    assert "Overall fve_nrm" in term and "[Per-category recall]" in term
    assert "Overall fve_nrm" in to_terminal(cmp, rich=True)


def test_corpus_mismatch_warns_and_falls_back_to_unpaired(runs):
    a, other = runs["doctored"][0], runs["other"]
    cmp = compare_runs([a, other], ["seed50", "custom"], n_boot=300)
    assert not cmp["same_corpus"] and cmp["pairing"][0]["paired"] is False
    assert any("CORPORA DIFFER" in w for w in cmp["warnings"])
    for text in (to_markdown(cmp), to_terminal(cmp), to_csv(cmp)):
        assert "CORPORA DIFFER" in text and "WARNING" in text
    d = cmp["differences"][0]["metrics"]["cos"]
    assert "UNPAIRED" in d["method"]
    ia, ib = independent(a)["item"]["cos"], independent(other)["item"]["cos"]
    assert d["mean"] == pytest.approx(np.mean(list(ib.values())) - np.mean(list(ia.values())), abs=1e-12)
    assert (d["n_a"], d["n_b"]) == (8, 16)
    assert "UNPAIRED" in next(r for r in cmp["rows"] if r["key"] == "diff.cos")["label"]


# ----------------------------------------------------------------------------- pattern rules


@pytest.mark.parametrize("values, kind, at", [
    # the seed's own table 3.2 rows
    ([0.880, 0.992, 0.982], "peak", 1),
    ([0.017, 0.005, 0.010], "flat", None),
    ([0.336, 0.420, 0.474], "monotonic_up", None),
    ([0.490, 0.649, 0.654], "saturating_up", None),
    ([0.266, 0.384, 0.431], "monotonic_up", None),
    ([-0.949, -0.992, -1.000], "saturating_down", None),
    ([0.088, 0.133, 0.160], "monotonic_up", None),
    # hand sequences
    ([0.5, 0.3, 0.1], "monotonic_down", None),
    ([0.5, 0.2, 0.6], "dip", 1),
    ([0.1, 0.5, 0.2, 0.6], "non_monotonic", None),
    ([0.1, 0.1, 0.5], "monotonic_up", None),  # a flat step, then up
    ([0.2, 0.6, 0.58], "peak", 1),  # a reversal bigger than eps is a peak, not saturation
    ([0.2, 0.6, 0.604], "saturating_up", None),  # within eps of the plateau
    ([0.2, 0.6, 0.75], "monotonic_up", None),  # 0.15 >= 0.4/3: still climbing
    ([0.3, 0.31], "flat", None),
    ([0.3, 0.5], "monotonic_up", None),
    ([0.7], "single", None),
    ([0.7, None, 0.1], "na", None),
])
def test_pattern_rules(values, kind, at):
    p = classify_pattern(values, ["A", "B", "C", "D"][: len(values)])
    assert p["kind"] == kind and p["at"] == at
    if kind == "peak":
        assert p["text"] == f"peak at {'ABCD'[at]}"


def test_pattern_tolerance_is_a_parameter():
    assert classify_pattern([0.1, 0.13, 0.16], tol=0.1)["kind"] == "flat"
    assert classify_pattern([0.1, 0.13, 0.16], tol=0.01)["kind"] == "monotonic_up"
    assert classify_pattern([1.0, 0.75, 0.75], tol=0.0)["kind"] == "saturating_down"  # k/n rows: 4/4 -> 3/4 -> 3/4


# ----------------------------------------------------------------------------- HTML report in chromium


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  var d = document.createElement('div'); d.id = 'img-check';
  d.textContent = 'loaded=' + ok + ' total=' + imgs.length + ' tables=' + document.querySelectorAll('table').length
    + ' h2=' + document.querySelectorAll('h2').length;
  document.body.appendChild(d);
});
</script>"""


def test_html_report_self_contained_and_renders_in_chromium(runs, tmp_path):
    from nlalab.report.html import write_report
    from nlalab.scorers.rescore import score_run

    dirs = [tmp_path / n for n in NAMES]
    for src, dst in zip(runs["doctored"], dirs):
        shutil.copytree(src, dst)
    score_run(dirs[0], "quote")
    html_path = write_report(dirs[0], dirs[1:], names=NAMES, n_boot=200)
    assert html_path == dirs[0] / "report.html"
    # core figures, one per control of the registry (every one has numbers along an axis), power and flags
    expected = {"category_fve_recall", "permutation_floors", "real_vs_random", "direction_heatmap", "stability",
                "scorers", "trajectories", "power", "flags", "recon_permutation", "blind", "baselines",
                "prefix_curve", "grounding", "seeds"}
    for name in expected:
        assert (dirs[0] / "plots" / f"{name}.png").stat().st_size > 1000, name
        assert (dirs[0] / "plots" / f"{name}.svg").read_text().lstrip().startswith(("<?xml", "<svg")), name
    expected = {p.stem for p in (dirs[0] / "plots").glob("*.png")}
    page = html_path.read_text()
    assert page.count('src="data:image/png;base64,') == len(expected)
    from nlalab.study.controls import registry

    for name, c in registry().items():  # a section per registered control, and one for power and for flags
        assert f'id="ctl-{name}"' in page, name
    assert 'id="power"' in page and 'id="flags"' in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "the report must not reference the network"
    for text in ("Per-category reconstruction and recall", "Scaling table", "Confabulation", "Random-Gaussian",
                 "Content scorer: quote", "B_rv", "n=32"):
        assert text in page, text
    md = (dirs[0] / "report.md").read_text()
    assert "Cross-run comparison" in md and "Content scorer: quote" in md and "plots/trajectories.png" in md

    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium); the HTML was checked statically")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    flags = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=10000"]
    dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'id="img-check">loaded=(\d+) total=(\d+) tables=(\d+) h2=(\d+)<', dom.stdout)
    assert m, f"probe not found in the DOM; chromium stderr: {dom.stderr[-2000:]}"
    loaded, total, tables, h2 = map(int, m.groups())
    assert total == len(expected) and loaded == total, (loaded, total)
    assert tables >= 10 and h2 >= 8
    shot = tmp_path / "screenshot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,3000", html_path.as_uri()],
                   capture_output=True, text=True, timeout=120)
    from PIL import Image

    im = np.asarray(Image.open(shot).convert("L"))
    assert im.shape == (3000, 1200)
    assert (im < 128).mean() > 0.01  # text, tables and plots were painted, not a blank page


def test_compare_names_and_refuses_runs_at_different_positions(runs, tmp_path):
    """Two runs captured at different positions measure different vectors: compare refuses to pair their items
    (one line naming the difference) unless allow_mismatch, and then states every difference."""
    from nlalab.errors import UsageError
    from nlalab.report.compare import compare_runs, to_markdown

    a, b = tmp_path / "last", tmp_path / "pos3"
    shutil.copytree(runs["real"][0], a)
    shutil.copytree(runs["real"][0], b)
    res = json.loads((b / "results.json").read_text())
    res["capture"]["positions"] = "3"
    res["b_rv"] = res["b_rv"] * 1.5
    atomic_write_json(b / "results.json", res)
    with pytest.raises(UsageError, match=r"capture position: last=last, pos3=3.*--allow-mismatch"):
        compare_runs([a, b], n_boot=50)
    cmp = compare_runs([a, b], n_boot=50, allow_mismatch=True)
    keys = {m["key"] for m in cmp["mismatches"]}
    assert keys == {"position", "b_rv"}
    assert cmp["pairing"][0]["paired"] is False and "capture position" in cmp["pairing"][0]["reason"]
    assert any("capture position" in w for w in cmp["warnings"])
    md = to_markdown(cmp)
    assert "What differs between the runs" in md and "| capture position | last | 3 |" in md
    same = compare_runs([a, a], names=["x", "y"], n_boot=50)
    assert same["mismatches"] == [] and same["pairing"][0]["paired"] is True
