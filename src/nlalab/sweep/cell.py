"""One cell of a sweep, as every executor runs it: ``run_cell(sweep_dir, name, env)``.

The function is importable by name (Ray and submitit pickle it by reference) and needs nothing but the
sweep directory: it reads the cell's config from ``sweep.yaml`` and runs ``run_study`` into the cell's run
directory, whose own resume (stage files keyed by content) makes a rerun after a crash repeat no finished
generation. It never raises for a failure of the study: it returns ``{"state": "failed", "error": ...}``
so one failed cell does not stop the others. A lost worker (killed process, lost node) leaves the record
``running``; the executor reports that.

Test hook: ``NLALAB_SWEEP_FAULT=<cell>:<stage>:<raise|exit>`` makes that cell raise, or ``os._exit(17)``
(a worker dying mid-run), when it enters ``<stage>`` (a stage name of ``run_study``: capture, verbalize,
reconstruct, score) — once per sweep directory, so the retry or rerun goes through.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional, Union

from nlalab.sweep.status import cell_finished, cell_record_path, one_line, read_cell_record, write_cell_record

FAULT_ENV = "NLALAB_SWEEP_FAULT"


def forwarded_env() -> dict[str, str]:
    """The driver's NLALAB_* settings (device, verbalize devices, the test hook), for workers elsewhere."""
    return {k: v for k, v in os.environ.items() if k.startswith("NLALAB_")}


def _fault(sweep_dir: Path, name: str, stage: str) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] != name or parts[1] != stage:
        return
    marker = cell_record_path(sweep_dir, name).with_suffix(".fault")
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(spec, encoding="utf-8")
    if parts[2] == "exit":
        os._exit(17)
    raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")


def run_cell(sweep_dir: Union[str, Path], name: str, env: Optional[dict[str, str]] = None) -> dict:
    """Run (or resume, or skip when finished) one cell; returns ``{"name", "state", "error"?}``."""
    from nlalab.sweep.grid import read_resolved

    for k, v in (env or {}).items():
        os.environ[k] = v
    d = Path(sweep_dir)
    try:
        cell = read_resolved(d).cell(name)
        cfg = cell.run_config(d)
    except Exception as e:  # noqa: BLE001 - reported as the cell's error
        write_cell_record(d, name, state="failed", error=one_line(e), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return {"name": name, "state": "failed", "error": one_line(e)}
    if cell_finished(cfg.out, cfg.identity()):
        return {"name": name, "state": "skipped"}
    attempts = int(read_cell_record(d, name).get("attempts", 0)) + 1
    stages: list[str] = []
    t0 = time.time()
    write_cell_record(d, name, state="running", attempts=attempts, stages=stages, error=None,
                      started_at=time.strftime("%Y-%m-%dT%H:%M:%S"), finished_at=None,
                      cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))

    def on_stage(stage: str) -> None:
        stages.append(stage)
        write_cell_record(d, name, stages=stages)
        _fault(d, name, stage)

    try:
        from nlalab.study.pipeline import run_study

        run_study(cfg, on_stage=on_stage)
    except Exception as e:  # noqa: BLE001 - a failed cell must not stop the others
        err = one_line(e)
        write_cell_record(d, name, state="failed", error=err, elapsed_s=round(time.time() - t0, 2),
                          finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return {"name": name, "state": "failed", "error": err}
    write_cell_record(d, name, state="done", elapsed_s=round(time.time() - t0, 2),
                      finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return {"name": name, "state": "done"}


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m nlalab.sweep.cell SWEEP_DIR NAME``: one cell in its own process (local executor, one per GPU)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m nlalab.sweep.cell SWEEP_DIR CELL_NAME", file=sys.stderr)
        return 2
    out = run_cell(args[0], args[1])
    return 0 if out["state"] in ("done", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
