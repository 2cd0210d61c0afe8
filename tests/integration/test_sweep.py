"""`nlalab sweep`: the sweep file, cell naming, checkpoint expansion, the local executor on a 4-cell grid
(a failed cell, its resume, a rerun that does nothing), the table, the plots and the comparison along an axis."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from nlalab.errors import UsageError
from nlalab.sweep.cli import sweep_app
from nlalab.sweep.grid import (cell_name, expand_checkpoints, load_sweep_file, parse_sweep, read_resolved, resolve,
                               slug, write_resolved)
from nlalab.sweep.results import cell_metrics, compare_sweep, sweep_plots, sweep_table
from nlalab.sweep.status import read_cell_record, read_status
from nlalab.testing import build_fixture_pair

from sweephelpers import CELLS, snapshot, write_sweep

FAULT = "seed-1__pos-last:reconstruct:raise"


# ------------------------------------------------------------------------------------ the sweep file


def _resolve(doc: dict):
    return resolve(parse_sweep(doc, "t.yaml"))


def test_grid_expands_in_axis_order_with_names_from_values():
    sw = _resolve({"av": "/m/av", "ar": "/m/ar", "target": "/m/t", "k": 2,
                   "grid": {"seed": [1, 2], "positions": ["last", 5]}})
    assert [c.name for c in sw.cells] == ["seed-1__pos-last", "seed-1__pos-5", "seed-2__pos-last", "seed-2__pos-5"]
    c = sw.cells[1]
    assert c.values == {"seed": 1, "positions": "5"}  # YAML's int becomes the str field's text
    assert c.config["seed"] == 1 and c.config["positions"] == "5" and c.config["k"] == 2
    assert c.run_config("/sweeps/s").out == "/sweeps/s/seed-1__pos-5"
    assert sw.axes == {"seed": [1, 2], "positions": ["last", "5"]}


def test_empty_grid_is_one_cell_named_base():
    sw = _resolve({"av": "/m/av", "ar": "/m/ar", "target": "/m/t"})
    assert [c.name for c in sw.cells] == ["base"]
    assert cell_name({}) == "base"


def test_slug_paths_and_odd_characters():
    assert slug("/data/pairs/qwen/av") == "qwen_av"
    assert slug("a b:c") == "a_b_c"
    assert slug(True) == "true" and slug(None) == "null"
    # two values that slug alike still give two directories
    sw = _resolve({"av": "/m/av", "ar": "/m/ar", "target": "/m/t", "grid": {"corpus": ["x/a.jsonl", "x_a.jsonl"]}})
    names = [c.name for c in sw.cells]
    assert len(set(names)) == 2 and all(n.startswith("corpus-x_a.jsonl-") for n in names)


@pytest.mark.parametrize("doc, needle", [
    ({"grid": {"seed": [1]}, "bogus": 1}, "unknown key(s) ['bogus']"),
    ({"out": "/x"}, "unknown key(s) ['out']"),
    ({"grid": {"nope": [1, 2]}}, "grid field 'nope' is not a RunConfig field"),
    ({"grid": {"seed": []}}, "grid.seed is empty"),
    ({"grid": {"seed": [1, 1]}}, "grid.seed repeats a value"),
    ({"grid": {"seed": 3}}, "grid.seed"),
    ({"resources": {"gpus": 1}}, "resources.gpus"),
])
def test_bad_sweep_files_are_usage_errors(doc, needle):
    with pytest.raises(UsageError) as e:
        parse_sweep(doc, "t.yaml")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_cell_values_are_refused_before_any_work():
    # RunConfig's own checks, each named by the cell
    with pytest.raises(UsageError, match=r"^cell seed-1__pos-first: .*'first' is not a position"):
        _resolve({"av": "/m/av", "ar": "/m/ar", "grid": {"seed": [1], "positions": ["first"]}})
    with pytest.raises(UsageError, match=r"^cell k-x: .*found 'x', expected a whole number"):
        _resolve({"av": "/m/av", "ar": "/m/ar", "grid": {"k": ["x"]}})


def test_sweep_file_errors(tmp_path):
    with pytest.raises(UsageError, match="sweep file not found"):
        load_sweep_file(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_sweep_file(bad)


def _fake_train_dir(root: Path, base: str = "/models/base") -> Path:
    for sub in ("init/av", "init/ar", "stages/av_sft/av", "stages/ar_sft/ar", "checkpoints/rl_step_10/av",
                "checkpoints/rl_step_10/ar", "checkpoints/rl_step_2/av", "checkpoints/rl_step_2/ar", "pair/av",
                "pair/ar", "checkpoints/notes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"base": base, "seed": 42}))
    return root


def test_checkpoints_expand_in_training_order(tmp_path):
    d = _fake_train_dir(tmp_path / "train")
    got = expand_checkpoints(d)
    assert [label for label, _ in got] == ["init", "sft", "rl_step_2", "rl_step_10", "final"]
    fields = dict(got)
    assert fields["sft"]["av"] == str((d / "stages/av_sft/av").resolve())
    assert fields["sft"]["ar"] == str((d / "stages/ar_sft/ar").resolve())
    assert fields["rl_step_10"]["av"] == str((d / "checkpoints/rl_step_10/av").resolve())
    assert all(f["target"] == "/models/base" and f["pair"] is None for _, f in got)
    sw = _resolve({"checkpoints": str(d), "grid": {"seed": [1, 2]}})
    assert list(sw.axes) == ["checkpoint", "seed"] and len(sw.cells) == 10
    assert sw.cells[0].name == "ckpt-init__seed-1"
    assert sw.cells[9].config["av"] == str((d / "pair/av").resolve())
    # an explicit target in the sweep file wins over the training base
    sw = _resolve({"checkpoints": str(d), "target": "/other/base"})
    assert {c.config["target"] for c in sw.cells} == {"/other/base"}


def test_checkpoints_errors(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="is not a directory"):
        expand_checkpoints(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no saved pair"):
        expand_checkpoints(tmp_path / "empty")
    d = _fake_train_dir(tmp_path / "t2")
    (d / "config.json").write_text(json.dumps({"layer": 3}))  # not a record of `nlalab train`'s base
    with pytest.raises(UsageError, match="records no base model and the sweep sets no target"):
        _resolve({"checkpoints": str(d)})
    # `nlalab train` without --base records base: null and trains on its default base, SmolLM2
    from nlalab import realmodels

    monkeypatch.setattr(realmodels, "smollm2_135m_instruct", lambda: tmp_path / "smol")
    (d / "config.json").write_text(json.dumps({"base": None}))
    assert {f["target"] for _, f in expand_checkpoints(d)} == {str(tmp_path / "smol")}


def test_pair_axis_takes_a_folder_or_a_registry_name(tmp_path):
    (tmp_path / "mine" / "av").mkdir(parents=True)
    (tmp_path / "mine" / "ar").mkdir()
    sw = _resolve({"target": "/m/t", "grid": {"pair": [str(tmp_path / "mine"), "some-registered-pair"]}})
    a, b = sw.cells
    assert a.config["av"] == str((tmp_path / "mine" / "av").resolve()) and a.config["pair"] is None
    assert b.config["pair"] == "some-registered-pair"


def test_resolved_sweep_may_grow_but_a_cell_may_not_change(tmp_path):
    base = {"av": "/m/av", "ar": "/m/ar", "target": "/m/t", "grid": {"seed": [1]}}
    write_resolved(tmp_path, _resolve(base))
    merged = write_resolved(tmp_path, _resolve({**base, "grid": {"seed": [1, 2]}}))
    assert [c.name for c in merged.cells] == ["seed-1", "seed-2"]
    assert [c.name for c in read_resolved(tmp_path).cells] == ["seed-1", "seed-2"]
    with pytest.raises(UsageError, match=r"already holds cell seed-1 with other settings \(k\)"):
        write_resolved(tmp_path, _resolve({**base, "k": 7}))


def test_cell_metrics_known_answer():
    est = lambda m, lo, hi: {"mean": m, "lo": lo, "hi": hi, "n": 8}  # noqa: E731
    res = {"categories": ["a"], "per_category": {"OVERALL": {"fve_nrm": est(0.5, 0.4, 0.6), "cos": est(0.9, 0.8, 1.0),
                                                             "recall": est(0.2, 0.1, 0.3)},
                                                 "a": {"fve_nrm": est(0.7, 0.6, 0.8), "recall": est(float("nan"), 0, 0)}},
           "controls": {"recall_permutation": {"overall": {"gap_within": 0.15, "p_within": 0.01, "gap_cross": 0.05,
                                                           "p_cross": 0.2, "n_items": 4}},
                        "recon_permutation": {"metrics": {"fve_nrm": {"overall": {"gap_within": 0.3, "p_within": 0.002,
                                                                                  "n_items": 4}}}}}}
    rows = {r["metric"]: r for r in cell_metrics(res)}
    assert set(rows) == {"fve_nrm", "cos", "recall", "fve_nrm.a", "recall_gap_within", "recall_gap_cross",
                         "fve_nrm_gap_within"}  # NaN recall.a and absent metrics have no row
    assert rows["fve_nrm"] == {"metric": "fve_nrm", "mean": 0.5, "lo": 0.4, "hi": 0.6, "n": 8, "p": None}
    assert rows["recall_gap_within"]["mean"] == 0.15 and rows["recall_gap_within"]["p"] == 0.01
    assert rows["recall_gap_within"]["lo"] is None and rows["recall_gap_within"]["n"] == 4
    assert rows["fve_nrm_gap_within"]["mean"] == 0.3


# ------------------------------------------------------------------------------- the local executor


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, monkeypatch_module):
    """The 4-cell grid with --executor local; cell seed-1__pos-last raises when it reaches reconstruct (after
    its capture and verbalize are saved). Then a rerun, then another rerun."""
    root = tmp_path_factory.mktemp("sweep_local")
    pair = build_fixture_pair(root / "pair", "qwen2")
    f = write_sweep(root / "sweep.yaml", pair)
    out = root / "out"
    runner = CliRunner()
    monkeypatch_module.setenv("NLALAB_SWEEP_FAULT", FAULT)
    first = runner.invoke(sweep_app, [str(f), "--out", str(out), "--executor", "local", "--gpus", "none"])
    status1 = read_status(out)
    rec1 = read_cell_record(out, "seed-1__pos-last")
    logs_after_fault = snapshot(out / "seed-1__pos-last" / "stages")
    second = runner.invoke(sweep_app, [str(f), "--out", str(out), "--gpus", "none", "--no-report"])
    rec2 = read_cell_record(out, "seed-1__pos-last")
    before = snapshot(out)
    third = runner.invoke(sweep_app, [str(f), "--out", str(out), "--gpus", "none"])
    return dict(out=out, pair=pair, file=f, first=first, second=second, third=third, status1=status1, rec1=rec1,
                rec2=rec2, logs_after_fault=logs_after_fault, before=before, after=snapshot(out))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_failed_cell_does_not_stop_the_others(local_sweep):
    s = local_sweep
    assert s["first"].exit_code == 3, s["first"].output
    assert "1 of 4 cells failed (seed-1__pos-last: RuntimeError: injected fault" in s["first"].output
    cells = s["status1"]["cells"]
    assert cells["seed-1__pos-last"]["state"] == "failed"
    assert "injected fault" in cells["seed-1__pos-last"]["error"]
    assert [cells[n]["state"] for n in CELLS[1:]] == ["done"] * 3
    assert s["status1"]["counts"]["done"] == 3 and s["status1"]["counts"]["failed"] == 1
    assert s["rec1"]["stages"] == ["capture", "verbalize", "reconstruct"]


def test_rerun_resumes_the_failed_cell_without_regenerating(local_sweep):
    s = local_sweep
    assert s["second"].exit_code == 0, s["second"].output
    assert "4/4 cells finished; 1 run now, 3 finished before" in s["second"].output
    # the resumed attempt went straight to reconstruct: capture and generation were reused from disk
    assert s["rec2"]["attempts"] == 2 and s["rec2"]["state"] == "done"
    assert s["rec2"]["stages"][0] == "reconstruct" and "verbalize" not in s["rec2"]["stages"]
    kept = snapshot(s["out"] / "seed-1__pos-last" / "stages")
    for name in ("capture.safetensors",):
        if name in s["logs_after_fault"]:
            assert kept[name] == s["logs_after_fault"][name]
    logs = [k for k in s["logs_after_fault"] if k.endswith(".jsonl")]
    assert logs and all(kept[k] == s["logs_after_fault"][k] for k in logs)  # generation logs untouched
    assert read_status(s["out"])["counts"]["done"] == 4


def test_rerun_of_a_finished_sweep_does_no_work(local_sweep):
    s = local_sweep
    assert s["third"].exit_code == 0, s["third"].output
    assert "0 run now, 4 finished before" in s["third"].output
    assert s["after"] == s["before"] and len(s["before"]) > 20  # every run file: same mtime and size


def test_sweep_yaml_and_cell_directories(local_sweep):
    out = local_sweep["out"]
    sw = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sw["kind"] == "nlalab.sweep" and [c["name"] for c in sw["cells"]] == CELLS
    for name in CELLS:
        cfg = json.loads((out / name / "config.json").read_text())["config"]
        vals = next(c["values"] for c in sw["cells"] if c["name"] == name)
        assert cfg["seed"] == vals["seed"] and cfg["positions"] == vals["positions"]
        assert cfg["out"] == str(out / name)
    # same seed, other position: other activations; same position, other seed: same activations
    res = {n: json.loads((out / n / "results.json").read_text()) for n in CELLS}
    assert res["seed-1__pos-last"]["b_rv"] == res["seed-2__pos-last"]["b_rv"]
    assert res["seed-1__pos-last"]["b_rv"] != res["seed-1__pos--6"]["b_rv"]


def test_sweep_table_matches_each_cells_results(local_sweep):
    out = local_sweep["out"]
    df = sweep_table(out)
    assert list(df.columns) == ["cell", "seed", "positions", "metric", "mean", "lo", "hi", "n", "p"]
    assert sorted(set(df["cell"])) == sorted(CELLS)
    for name in CELLS:
        res = json.loads((out / name / "results.json").read_text())
        for m in ("fve_nrm", "cos", "recall"):
            row = df[(df["cell"] == name) & (df["metric"] == m)].iloc[0]
            e = res["per_category"]["OVERALL"][m]
            assert math.isclose(row["mean"], e["mean"]) and math.isclose(row["lo"], e["lo"])
            assert math.isclose(row["hi"], e["hi"]) and row["n"] == e["n"]
        gap = df[(df["cell"] == name) & (df["metric"] == "recall_gap_within")].iloc[0]
        assert math.isclose(gap["mean"], res["controls"]["recall_permutation"]["overall"]["gap_within"])
    assert set(df["positions"]) == {"last", "-6"} and set(df["seed"]) == {"1", "2"}
    import pandas as pd

    csv = pd.read_csv(out / "sweep.csv")
    assert len(csv) == len(df) and math.isclose(csv["mean"].sum(), df["mean"].sum())
    pq = pd.read_parquet(out / "sweep.parquet")
    assert pq.equals(df)


def test_sweep_plots_one_per_axis(local_sweep, tmp_path):
    figs = sweep_plots(local_sweep["out"], tmp_path)
    assert set(figs) == {"sweep_seed", "sweep_positions"}
    for p in figs.values():
        assert p.is_file() and p.stat().st_size > 5000 and p.with_suffix(".svg").is_file()
    assert (local_sweep["out"] / "plots" / "sweep_positions.png").is_file()  # the CLI drew them too
    assert "data:image/png;base64," in (local_sweep["out"] / "report.html").read_text()


def test_compare_along_an_axis(local_sweep):
    got = compare_sweep(local_sweep["out"], axis="seed")
    assert [g["group"] for g in got] == [{"positions": "last"}, {"positions": "-6"}]
    cmp = got[0]["comparison"]
    assert cmp["names"] == ["seed=1", "seed=2"] and all(p["paired"] for p in cmp["pairing"])
    got = compare_sweep(local_sweep["out"], axis="positions")
    cmp = got[0]["comparison"]
    assert cmp["names"] == ["positions=last", "positions=-6"]
    assert not cmp["pairing"][0]["paired"] and any("capture position" in w for w in cmp["warnings"])
    with pytest.raises(UsageError, match="no axis 'layer'"):
        compare_sweep(local_sweep["out"], axis="layer")


def test_sub_app_mounts_as_nlalab_sweep(tmp_path):
    app = typer.Typer()

    @app.command()
    def version() -> None:  # a second command, as in nlalab's own app
        typer.echo("v")

    app.add_typer(sweep_app, name="sweep")
    r = CliRunner().invoke(app, ["sweep", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "sweep file not found" in r.output
    r = CliRunner().invoke(app, ["sweep", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o"),
                                 "--executor", "dask"])
    assert r.exit_code == 2 and "--executor 'dask': expected one of local, ray, slurm" in r.output


def test_sweep_markdown_and_html_report(local_sweep, tmp_path):
    import shutil

    from nlalab.format import fmt_num
    from nlalab.sweep.report import sweep_markdown, sweep_tables, write_sweep_report

    out = local_sweep["out"]
    md = sweep_markdown(out, n_boot=100)
    res = json.loads((out / "seed-2__pos--6" / "results.json").read_text())
    e = res["per_category"]["OVERALL"]["fve_nrm"]
    row = next(line for line in md.splitlines() if line.startswith("| seed-2__pos--6 |"))
    assert f"| 2 | -6 | done | {fmt_num(e['mean'])} [{fmt_num(e['lo'])}, {fmt_num(e['hi'])}] |" in row
    titles = [t.title for t in sweep_tables(out, n_boot=100)]
    assert titles == ["Sweep grid", "Along seed (positions=last)", "Along seed (positions=-6)",
                      "Along positions (seed=1)", "Along positions (seed=2)"]
    assert "runs differ in capture position" in md and "Failed cells" not in md
    page = write_sweep_report(out, tmp_path / "r.html", n_boot=100).read_text()
    assert page.count("data:image/png;base64,") == 2 and all(n in page for n in CELLS)
    # a failed, unfinished cell: its state and error in the grid and in the failures table
    cp = tmp_path / "copy"
    shutil.copytree(out, cp)
    (cp / "seed-1__pos--6" / "report.md").unlink()
    st = json.loads((cp / "status.json").read_text())
    st["cells"]["seed-1__pos--6"] = {"state": "failed", "error": "RuntimeError: boom"}
    (cp / "status.json").write_text(json.dumps(st))
    tabs = {t.title: t for t in sweep_tables(cp, n_boot=100)}
    grid_row = next(r for r in tabs["Sweep grid"].rows if r[0] == "seed-1__pos--6")
    assert grid_row[3] == "failed" and set(grid_row[4:]) == {"—"}
    assert tabs["Failed cells"].rows == [["seed-1__pos--6", "failed", "RuntimeError: boom"]]
    assert "Along positions (seed=1)" not in tabs  # one finished cell: nothing to compare along positions


def test_checkpoint_sweep_runs_each_saved_pair(local_sweep, tmp_path):
    """A training folder (init/ and pair/ as `nlalab train` writes them, here links to the fixture pair)
    expands to one cell per checkpoint; the target comes from the training config's base."""
    from nlalab.sweep.run import run_sweep

    pair = local_sweep["pair"]
    train = tmp_path / "train"
    for sub in ("init", "pair"):
        (train / sub).mkdir(parents=True)
        (train / sub / "av").symlink_to(Path(pair.av).resolve(), target_is_directory=True)
        (train / sub / "ar").symlink_to(Path(pair.ar).resolve(), target_is_directory=True)
    (train / "config.json").write_text(json.dumps({"base": str(pair.target)}))
    doc = {**yaml.safe_load(local_sweep["file"].read_text()), "checkpoints": str(train), "grid": {}}
    for k in ("av", "ar", "target"):
        doc.pop(k)
    f = tmp_path / "ckpt.yaml"
    f.write_text(yaml.safe_dump(doc))
    s = run_sweep(f, tmp_path / "out", "local", gpus="none")
    assert s["failed"] == {} and s["ran"] == ["ckpt-init", "ckpt-final"]
    cfg = json.loads((tmp_path / "out" / "ckpt-final" / "config.json").read_text())["config"]
    assert cfg["av"] == str(Path(pair.av).resolve()) and cfg["target"] == str(pair.target)
    df = sweep_table(tmp_path / "out")
    assert list(df.columns[:3]) == ["cell", "checkpoint", "metric"]
    assert set(df["checkpoint"]) == {"init", "final"}
    # the same pair under two labels, same seed: the same explanations
    a, b = (tmp_path / "out" / n / "samples.jsonl" for n in ("ckpt-init", "ckpt-final"))
    assert a.read_bytes() == b.read_bytes()


def test_a_second_driver_on_the_same_sweep_dir_is_refused(local_sweep, tmp_path):
    from nlalab.errors import NLALabError
    from nlalab.rundir.io import dir_lock
    from nlalab.sweep.run import run_sweep

    out = tmp_path / "busy"
    with dir_lock(out, what="nlalab sweep"):
        with pytest.raises(NLALabError, match=r"is in use by pid \d+ \(nlalab sweep\)"):
            run_sweep(local_sweep["file"], out, "local")


def test_slurm_without_slurm_is_a_usage_error(tmp_path):
    import shutil

    from nlalab.sweep.executors import get_executor

    if shutil.which("sbatch"):
        pytest.skip("this machine has SLURM")
    with pytest.raises(UsageError, match="no SLURM here.*--cluster local"):
        get_executor("slurm")(tmp_path, ["c"], lambda r: None)
    with pytest.raises(UsageError, match="unknown executor 'dask'"):
        get_executor("dask")


def test_local_gpu_slots(monkeypatch):
    from nlalab.sweep.executors.local import gpu_slots, parse_gpus

    assert parse_gpus("none") == [] and parse_gpus("3") == ["0", "1", "2"] and parse_gpus("0, 3") == ["0", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert parse_gpus("auto") == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert parse_gpus("auto") == []
    with pytest.raises(UsageError, match="--gpus 'a,b'"):
        parse_gpus("a,b")
    ids = ["0", "1", "2", "3", "4"]
    assert gpu_slots(ids, 1) == ["0", "1", "2", "3", "4"]
    assert gpu_slots(ids, 0) == ids  # a CPU-only cell still takes one GPU's slot: one cell per GPU
    assert gpu_slots(ids, 2) == ["0,1", "2,3"]
    assert gpu_slots(ids, 1.5) == ["0,1", "2,3"]
    assert gpu_slots(ids, 8) == []


def test_dry_run_lists_cells_and_writes_nothing(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"av": "/m/av", "ar": "/m/ar", "target": "/m/t", "grid": {"seed": [1, 2],
                                                                                         "positions": ["last", 5]}},
                                sort_keys=False))
    r = CliRunner().invoke(sweep_app, [str(f), "--out", str(tmp_path / "o"), "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = [x for x in r.stdout.splitlines() if "\t" in x]
    assert lines[1] == f"{tmp_path / 'o' / 'seed-1__pos-5'}\tseed=1 positions=5" and len(lines) == 4
    assert not (tmp_path / "o").exists()
    f.write_text(yaml.safe_dump({"grid": {"positions": ["first"]}}))
    r = CliRunner().invoke(sweep_app, [str(f), "--out", str(tmp_path / "o"), "--dry-run"])
    assert r.exit_code == 2 and "cell pos-first: " in r.output and "Traceback" not in r.output


def test_help_has_examples_and_exit_codes():
    r = CliRunner().invoke(sweep_app, ["--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert r.exit_code == 0
    assert "Examples:" in r.output and "nlalab sweep grid.yaml --out sweeps/pos_seed --executor ray" in r.output
    assert "Exit codes: 0 ok; 1 a check failed" in r.output
