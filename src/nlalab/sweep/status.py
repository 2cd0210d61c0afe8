"""Where each cell of a sweep stands, in files every process can write without a shared lock.

A cell's worker (in this process, a Ray worker, a SLURM job) writes its own record,
``SWEEP_DIR/.cells/<name>.json``, atomically: ``running`` when it starts (with the stages it entered),
``done`` or ``failed`` (with a one-line error) when it ends. The driver merges those records, plus what
the executor saw (a worker lost, a job killed), into ``SWEEP_DIR/status.json``, also atomically.

Whether a cell is finished is read from its run directory, not from the records: a cell is done when its
``report.md`` (the last file `nlalab run` writes) exists and its ``config.json`` has the cell's identity.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional, Union

from nlalab.rundir.io import atomic_write_json
from nlalab.rundir.layout import RunLayout

STATUS = "status.json"
CELLS_DIR = ".cells"
STATES = ("pending", "running", "done", "failed")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def cell_record_path(sweep_dir: Union[str, Path], name: str) -> Path:
    return Path(sweep_dir) / CELLS_DIR / f"{name}.json"


def read_cell_record(sweep_dir: Union[str, Path], name: str) -> dict:
    p = cell_record_path(sweep_dir, name)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_cell_record(sweep_dir: Union[str, Path], name: str, **fields: Any) -> dict:
    """Update this cell's record (the worker is its only writer while it runs)."""
    rec = read_cell_record(sweep_dir, name)
    rec.update(fields, name=name, updated_at=_now(), host=socket.gethostname(), pid=os.getpid())
    p = cell_record_path(sweep_dir, name)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(p, rec)
    return rec


def cell_finished(cell_dir: Union[str, Path], identity: dict) -> bool:
    """The cell's run completed with these settings (so a rerun must not touch it)."""
    lay = RunLayout(Path(cell_dir))
    if not (lay.report_md.is_file() and lay.results.is_file() and lay.config.is_file()):
        return False
    try:
        old = json.loads(lay.config.read_text(encoding="utf-8")).get("identity")
    except (OSError, ValueError):
        return False
    return json.loads(json.dumps(old)) == json.loads(json.dumps(identity))


def one_line(e: BaseException, limit: int = 400) -> str:
    """An exception as one line: its type and the first line of its message."""
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0] if msg else ''}".strip()
    return text if len(text) <= limit else text[:limit - 1] + "…"


class StatusFile:
    """The driver's view of a sweep, rewritten atomically after every change."""

    def __init__(self, sweep_dir: Union[str, Path], names: list[str], executor: str):
        self.dir = Path(sweep_dir)
        self.path = self.dir / STATUS
        self.executor = executor
        self.started_at = _now()
        self.cells: dict[str, dict] = {n: {"state": "pending"} for n in names}

    def set(self, name: str, state: str, error: Optional[str] = None, **extra: Any) -> None:
        rec = read_cell_record(self.dir, name)
        entry = {"state": state}
        for k in ("attempts", "stages", "elapsed_s", "host", "started_at", "finished_at"):
            if k in rec:
                entry[k] = rec[k]
        if error:
            entry["error"] = error
        entry.update(extra)
        self.cells[name] = entry
        self.write()

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for c in self.cells.values():
            out[c["state"]] = out.get(c["state"], 0) + 1
        return out

    def failed(self) -> dict[str, str]:
        return {n: c.get("error", "") for n, c in self.cells.items() if c["state"] == "failed"}

    def write(self) -> None:
        atomic_write_json(self.path, {"kind": "nlalab.sweep.status", "executor": self.executor,
                                      "started_at": self.started_at, "updated_at": _now(),
                                      "counts": self.counts(), "cells": self.cells})


def read_status(sweep_dir: Union[str, Path]) -> dict:
    p = Path(sweep_dir) / STATUS
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


__all__ = ["StatusFile", "read_status", "cell_finished", "write_cell_record", "read_cell_record", "one_line",
           "STATUS", "CELLS_DIR"]
