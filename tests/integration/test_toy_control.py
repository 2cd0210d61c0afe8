"""Adding a control is one module: a toy control registered here (and nowhere else) is planned, generated,
reconstructed and analysed by the study, and shows up in results.json, report.md, report.html and compare."""

from __future__ import annotations

import json

import pytest
from runhelpers import cfg_for

from nlalab.format import Table, fmt_num
from nlalab.study.controls import Control, Figure, GenJob, register, unregister


class ToyControl(Control):
    """Verbalize the negated activations of the first two items, and reconstruct each item's prompt upper-cased."""

    name = "toy"
    title = "Toy control (test)"
    help = "negated activations and shouted prompts"

    def generation(self, ctx):
        return [GenJob("toy", -ctx.acts[:2], ctx.seed, 9_000_000)]

    def texts(self, ctx):
        return [it.prompt.upper() for it in ctx.items]

    def analyze(self, ctx):
        neg = ctx.scored_rows("toy", ctx.vectors["toy"])
        shout = ctx.score(ctx.text_recons["toy"], ctx.acts)
        m = float(sum(r["fve_nrm"] for r in neg) / len(neg))
        return {"neg_fve_nrm": m, "shout_cos": [float(x) for x in shout["cos"]], "n": len(neg),
                "verdict": f"toy verdict {m:.3f}"}

    def tables(self, section, results):
        return [Table("Toy table", ["what", "value"], [["negated fve_nrm", fmt_num(section["neg_fve_nrm"])]],
                      key="toy")]

    def figures(self, section, results, plots_dir, run=None):
        from nlalab import plotting as P

        plt = P.plt()
        fig, ax = plt.subplots()
        ax.plot(section["shout_cos"], "o")
        return [Figure(P.save(fig, plots_dir, "toy_curve"), "toy figure", "cos of shouted prompts")]

    def compare_rows(self, runs, row):
        cells = [None if not r.section("toy") else {"mean": r.section("toy")["neg_fve_nrm"], "n": 2} for r in runs]
        return [row("toy.neg", "Toy: negated fve_nrm", "Toy", cells)]


@pytest.fixture
def toy():
    register(ToyControl)
    yield ToyControl
    unregister("toy")


def test_a_registered_toy_control_runs_and_renders_everywhere(toy, fixture_pairs, tmp_path):
    from nlalab.report.compare import compare_runs, to_markdown
    from nlalab.report.html import write_report
    from nlalab.study.config import RunConfig
    from nlalab.study.controls import selectable
    from nlalab.study.pipeline import run_study

    assert "toy" in selectable()
    p = fixture_pairs["qwen2"]
    cfg = cfg_for(p, tmp_path / "a", controls=["toy"], limit_per_category=2)
    res = run_study(cfg)
    sec = res["controls"]["toy"]
    assert sec["n"] == 2 * cfg.k and len(sec["shout_cos"]) == 8 and sec["verdict"].startswith("toy verdict")
    on_disk = json.loads((tmp_path / "a" / "results.json").read_text())
    assert on_disk["controls"]["toy"] == sec
    assert (tmp_path / "a" / "stages" / "control_toy.jsonl").is_file()
    md = (tmp_path / "a" / "report.md").read_text()
    assert "## Toy control (test)" in md and "toy verdict" in md and "| negated fve_nrm |" in md
    assert "toy verdict" in res["_summary"]
    html = write_report(tmp_path / "a").read_text()
    assert 'id="ctl-toy"' in html and "Toy table" in html and "cos of shouted prompts" in html
    assert (tmp_path / "a" / "plots" / "toy_curve.png").is_file()
    run_study(cfg_for(p, tmp_path / "b", controls=[], limit_per_category=2))
    cmp = compare_runs([tmp_path / "a", tmp_path / "b"], n_boot=50)
    row = next(r for r in cmp["rows"] if r["key"] == "toy.neg")
    assert row["values"][0]["mean"] == pytest.approx(sec["neg_fve_nrm"]) and row["values"][1] is None
    assert "Toy: negated fve_nrm" in to_markdown(cmp)
    assert isinstance(RunConfig(out="x", controls=["toy"]).controls, list)


def test_untrained_rung_is_read_from_its_own_run_and_compared_item_by_item(fixture_pairs, tmp_path):
    """--untrained-run DIR fills the baseline ladder's untrained rung: the other run's item means, and the paired
    gap real − untrained over the items both scored (a known answer from the two samples files)."""
    import statistics

    from nlalab.study.pipeline import run_study

    p = fixture_pairs["qwen2"]
    other = run_study(cfg_for(fixture_pairs["llama"], tmp_path / "untrained", controls=[], limit_per_category=2,
                              brv="0.8"))
    res = run_study(cfg_for(p, tmp_path / "real", controls=["baselines"], limit_per_category=2, brv="0.8",
                            untrained_run=str(tmp_path / "untrained")))
    rung = res["controls"]["baselines"]["rungs"]["untrained_pair"]

    def item_means(d):
        rows = [json.loads(x) for x in (d / "samples.jsonl").read_text().splitlines()]
        acc = {}
        for r in rows:
            acc.setdefault(r["item_id"], []).append(r["fve_nrm"])
        return {k: statistics.mean(v) for k, v in acc.items()}

    mine, theirs = item_means(tmp_path / "real"), item_means(tmp_path / "untrained")
    gap = statistics.mean(mine[k] - theirs[k] for k in mine)
    assert rung["fve_nrm"]["gap_ci"]["mean"] == pytest.approx(gap, abs=1e-9)
    assert rung["fve_nrm"]["mean"] == pytest.approx(statistics.mean(theirs.values()), abs=1e-9)
    assert rung["source"].endswith("untrained") and "untrained_pair" in rung["verdict"]
    assert other["b_rv"] == 0.8
    # a run with another B_rv is refused: its fve_nrm would not be comparable
    from nlalab.errors import UsageError

    with pytest.raises(UsageError, match="divides by B_rv"):
        run_study(cfg_for(p, tmp_path / "real2", controls=["baselines"], limit_per_category=2,
                          untrained_run=str(tmp_path / "untrained")))
