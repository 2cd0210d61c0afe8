"""`nlalab sweep` on the engines: Ray (local instance, 2 CPUs, a cell whose worker dies mid-run) and SLURM
through submitit's local executor, each against the same 4-cell grid run by the local executor: the
samples must be byte-identical. Slow (each grid takes a minute or more on 2 CPU cores)."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from nlalab.sweep.cli import sweep_app
from nlalab.sweep.run import run_sweep
from nlalab.sweep.status import read_cell_record, read_status
from nlalab.testing import build_fixture_pair

from sweephelpers import CELLS, snapshot, write_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_engines")
    pair = build_fixture_pair(root / "pair", "qwen2")
    f = write_sweep(root / "sweep.yaml", pair)
    ref = root / "local"
    summary = run_sweep(f, ref, "local", gpus="none")
    assert summary["failed"] == {} and sorted(summary["ran"]) == sorted(CELLS)
    return root, f, ref


def _same_samples(a, b):
    for n in CELLS:
        assert (a / n / "samples.jsonl").read_bytes() == (b / n / "samples.jsonl").read_bytes(), n


def test_ray_worker_lost_mid_run_is_retried(grid, monkeypatch):
    pytest.importorskip("ray")
    root, f, ref = grid
    out = root / "ray"
    # the worker of one cell dies (os._exit) as it enters reconstruct; Ray retries the task on a new worker
    monkeypatch.setenv("NLALAB_SWEEP_FAULT", "seed-2__pos--6:reconstruct:exit")
    r = CliRunner().invoke(sweep_app, [str(f), "--out", str(out), "--executor", "ray", "--ray-num-cpus", "2",
                                       "--retries", "1", "--no-report"])
    assert r.exit_code == 0, r.output
    rec = read_cell_record(out, "seed-2__pos--6")
    assert rec["state"] == "done" and rec["attempts"] == 2
    assert rec["stages"][0] == "reconstruct"  # the retry resumed from the run directory: nothing regenerated
    assert read_status(out)["counts"]["done"] == 4
    _same_samples(ref, out)
    before = snapshot(out)
    r = CliRunner().invoke(sweep_app, [str(f), "--out", str(out), "--executor", "ray", "--ray-num-cpus", "2"])
    assert r.exit_code == 0 and "0 run now, 4 finished before" in r.output
    assert snapshot(out) == before


def test_ray_without_retries_reports_the_lost_worker_and_a_rerun_completes(grid, monkeypatch):
    pytest.importorskip("ray")
    root, f, ref = grid
    out = root / "ray0"
    monkeypatch.setenv("NLALAB_SWEEP_FAULT", "seed-1__pos-last:verbalize:exit")
    s = run_sweep(f, out, "ray", ray_num_cpus=2, retries=0)
    assert list(s["failed"]) == ["seed-1__pos-last"]
    assert s["failed"]["seed-1__pos-last"].startswith("Ray task failed after 0 retries")
    assert read_status(out)["cells"]["seed-1__pos-last"]["state"] == "failed"
    s = run_sweep(f, out, "ray", ray_num_cpus=2, retries=0)
    assert s["failed"] == {} and s["ran"] == ["seed-1__pos-last"]
    _same_samples(ref, out)


def test_slurm_through_submitit_local_executor(grid):
    pytest.importorskip("submitit")
    root, f, ref = grid
    out = root / "slurm"
    r = CliRunner().invoke(sweep_app, [str(f), "--out", str(out), "--executor", "slurm", "--cluster", "local",
                                       "--partition", "gpu", "--time", "20", "--no-report"])
    assert r.exit_code == 0, r.output
    assert read_status(out)["counts"]["done"] == 4
    _same_samples(ref, out)
    assert any((out / ".submitit").glob("*_submitted.pkl"))  # the jobs went through submitit


def test_local_one_cell_per_gpu_pins_each_subprocess(grid):
    root, f, ref = grid
    out = root / "pergpu"
    # two "GPUs" on a CPU machine: cells run as two subprocesses at a time, CUDA_VISIBLE_DEVICES set for each
    s = run_sweep(f, out, "local", gpus="0,1")
    assert s["failed"] == {}
    seen = {read_cell_record(out, n)["cuda_visible_devices"] for n in CELLS}
    assert seen == {"0", "1"}
    assert len({read_cell_record(out, n)["pid"] for n in CELLS} | {os.getpid()}) == 5
    _same_samples(ref, out)
