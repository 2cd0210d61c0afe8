"""`nlalab compare` of three runs of one pair that differ only in the seed labels no trend (issue 15)."""

import json

from nlalab.report.compare import compare_runs
from nlalab.study.analysis import analyze_rows
from nlalab.testing.simulate import SEED_DESIGN, simulate_rows


def _write_run(d, rows, seed):
    d.mkdir()
    cats = SEED_DESIGN.categories
    res = analyze_rows(rows, categories=cats, b_rv=1.0, b_rv_source="simulation", n_perm=99, n_boot=200, seed=seed)
    (d / "results.json").write_text(json.dumps(res))
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "config.json").write_text(json.dumps({"corpus": {"ref": "sim", "sha256": "ab" * 32, "categories": cats},
                                               "config": {"seed": seed}, "pair": {"name": "sim-pair"}}))
    return d


def _compare(tmp_path, shifts):
    dirs = [_write_run(tmp_path / f"run{i}", simulate_rows(seed=100 + i, corpus_seed=7, item_content=0.1,
                                                           category_content=0.3, run_shift=s), 100 + i)
            for i, s in enumerate(shifts)]
    return compare_runs(dirs, ["S1", "S2", "S3"], n_boot=300, seed=0)


def test_three_seeds_of_one_pair_show_no_trend(tmp_path):
    cmp = _compare(tmp_path, (0.0, 0.0, 0.0))
    pats = {r["key"]: r["pattern"] for r in cmp["rows"] if r["kind"] != "diff"}
    tested = {k: p for k, p in pats.items() if p["kind"] != "na"}
    assert {"fve_nrm", "cos", "recall", "spread.fve_nrm", "spread.recall", "perm.gap_within",
            "perm.gap_cross"} <= set(tested)
    moving = [k for k, p in tested.items() if p["kind"] != "flat"]
    # each row has family-wise α = 0.05: with ~15 tested rows, at most a couple by chance (none here)
    assert len(moving) <= max(1, round(0.05 * len(tested) * 2)), moving
    assert tested["fve_nrm"]["kind"] == "flat" and "Holm" in cmp["settings"]["pattern_correction"]


def test_a_real_change_between_runs_is_labelled(tmp_path):
    cmp = _compare(tmp_path, (0.0, 0.05, 0.10))
    pats = {r["key"]: r["pattern"] for r in cmp["rows"]}
    assert pats["fve_nrm"]["kind"] == "monotonic_up" and all(s["counts"] for s in pats["fve_nrm"]["steps"])
