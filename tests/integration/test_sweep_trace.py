"""The training-trace report (scripts/gen_training_trace.py, nlalab.sweep.trace) on a small checkpoint sweep.

One real cell (the fixture pair, recon and recall permutation controls) is run by `nlalab sweep`; the other
checkpoints' cells are copies of it with their own numbers written into results.json (a real run per
checkpoint would cost ~10 s each and test nothing more), so the table can be checked against each cell."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nlalab.sweep.grid import load_sweep_file, resolve, write_resolved
from nlalab.sweep.run import run_sweep
from nlalab.sweep.trace import trace_rows
from nlalab.testing import build_fixture_pair

from sweephelpers import FAST_SWEEP

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["init", "sft", "rl_step_000002", "rl_step_000004", "final"]


def _link_pair(dst: Path, pair) -> None:
    dst.mkdir(parents=True)
    (dst / "av").symlink_to(Path(pair.av).resolve(), target_is_directory=True)
    (dst / "ar").symlink_to(Path(pair.ar).resolve(), target_is_directory=True)


@pytest.fixture(scope="module")
def trace_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("trace")
    pair = build_fixture_pair(root / "pair", "qwen2")
    train = root / "train"
    _link_pair(train / "init", pair)
    (train / "config.json").write_text(json.dumps({"base": str(pair.target), "rl": {"steps": 4}}))
    doc = {**FAST_SWEEP, "controls": ["recon_permutation"], "checkpoints": str(train),
           "grid": {}}
    f = root / "sweep.yaml"
    f.write_text(yaml.safe_dump(doc))
    out = root / "out"
    s = run_sweep(f, out, "local", gpus="none")
    assert s["failed"] == {}
    # the training run's other pairs (links to the same weights), then the sweep grows by their cells
    _link_pair(train / "stages" / "av_sft", pair)
    (train / "stages" / "av_sft" / "ar").unlink()
    (train / "stages" / "ar_sft").mkdir(parents=True)
    (train / "stages" / "ar_sft" / "ar").symlink_to(Path(pair.ar).resolve(), target_is_directory=True)
    for n in ("rl_step_000002", "rl_step_000004"):
        _link_pair(train / "checkpoints" / n, pair)
    for role in ("av", "ar"):  # a real folder: the trace finds pair/checkpoint.json beside it
        shutil.copytree(Path(getattr(pair, role)).resolve(), train / "pair" / role)
    (train / "pair" / "checkpoint.json").write_text(json.dumps({"checkpoint": "rl_step_000002", "step": 2}))
    sw = write_resolved(out, resolve(load_sweep_file(f), str(f)))
    real = out / "ckpt-init"
    for i, cell in enumerate(sw.cells):
        if cell.name == "ckpt-init":
            continue
        shutil.copytree(real, out / cell.name)
        cfg = json.loads((out / cell.name / "config.json").read_text())
        cfg["identity"] = cell.identity()
        (out / cell.name / "config.json").write_text(json.dumps(cfg))
        res = json.loads((out / cell.name / "results.json").read_text())
        ov = res["per_category"]["OVERALL"]
        ov["fve_nrm"] = {**ov["fve_nrm"], "mean": 0.1 * i, "lo": 0.1 * i - 0.05, "hi": 0.1 * i + 0.05}
        ov["recall"] = {**ov["recall"], "mean": 0.02 * i, "lo": 0.01 * i, "hi": 0.03 * i}
        recon = res["controls"]["recon_permutation"]["metrics"]["fve_nrm"]["overall"]
        recon["gap_within"], recon["p_within"] = 0.05 * i, 0.5 / i
        recon["gap_within_ci"] = {**(recon.get("gap_within_ci") or {}), "lo": 0.05 * i - 0.1, "hi": 0.05 * i + 0.1}
        if cell.name == "ckpt-rl_step_000004":  # a cell without the recon control: its gap is n/a, not 0
            del res["controls"]["recon_permutation"]
        (out / cell.name / "results.json").write_text(json.dumps(res))
    return {"out": out, "cells": [c.name for c in sw.cells]}


def test_trace_rows_in_training_order_with_steps(trace_sweep):
    rows = trace_rows(trace_sweep["out"])
    assert [r["checkpoint"] for r in rows] == LABELS
    assert [r["step"] for r in rows] == [None, 0, 2, 4, 2]  # final = the checkpoint pair/ was exported from
    assert rows[3]["gap"] is None and rows[3]["gap_p"] is None


def test_script_writes_figure_and_table_with_the_cells_numbers(trace_sweep, tmp_path):
    out = trace_sweep["out"]
    md = tmp_path / "docs" / "training_trace.md"
    fig = tmp_path / "docs" / "img" / "training_trace"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_training_trace.py"), str(out), "--out", str(fig),
                        "--md", str(md)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    png = fig.with_suffix(".png")
    assert png.stat().st_size > 10_000 and fig.with_suffix(".svg").is_file()
    from PIL import Image

    assert round(Image.open(png).info["dpi"][0]) == 200
    text = md.read_text()
    assert "](img/training_trace.png)" in text
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| checkpoint")]
    assert [ln.split(" | ")[0][2:] for ln in table] == LABELS
    for ln, label in zip(table, LABELS):
        cells = [c.strip() for c in ln.strip("| ").split(" | ")]
        res = json.loads((out / f"ckpt-{label}" / "results.json").read_text())
        ov = res["per_category"]["OVERALL"]
        fv = ov["fve_nrm"]
        assert cells[2] == f"{fv['mean']:+.3f} [{fv['lo']:+.3f}, {fv['hi']:+.3f}]"
        assert cells[5].startswith(f"{ov['recall']['mean']:.3f}")
        rp = res["controls"]["recall_permutation"]["overall"]
        assert cells[6] == f"{rp['floor_within']['mean']:.3f}"
        assert cells[8] == (f"{ov['hit']['mean']:.3f}" if ov.get("hit") else "n/a")
        recon = (res["controls"].get("recon_permutation") or {}).get("metrics", {}).get("fve_nrm", {}).get("overall")
        if recon is None:
            assert cells[3] == "n/a" and cells[4] == "n/a"
        else:
            ci = recon["gap_within_ci"]
            assert cells[3] == f"{recon['gap_within']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}]"
            assert cells[4] == f"{recon['p_within']:.3f}" or cells[4].startswith("≤")
    assert table[0].split(" | ")[1] == "before training" and table[-1].split(" | ")[1] == "2 (final)"
