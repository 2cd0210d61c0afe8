"""Shared helpers of the sweep tests (a plain module: pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

# a 4-cell grid small enough to run in ~10 s a cell on 2 CPU cores; position -6 is inside every prompt
# of the fixture chat template (position 3 is template text, the same token for every item: B_rv = 0)
FAST_SWEEP = dict(k=2, max_new_tokens=8, n_random=4, n_perm=50, n_boot=50, limit_per_category=2, progress=False,
                  controls=[])
GRID = {"seed": [1, 2], "positions": ["last", -6]}
CELLS = ["seed-1__pos-last", "seed-1__pos--6", "seed-2__pos-last", "seed-2__pos--6"]


def write_sweep(path: Path, pair, grid=None, **extra) -> Path:
    doc = {"av": str(pair.av), "ar": str(pair.ar), "target": str(pair.target), **FAST_SWEEP, **extra,
           "grid": GRID if grid is None else grid}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def snapshot(d: Path, skip: tuple = (".cells", "status.json", "sweep.csv", "sweep.parquet", "sweep.yaml",
                                     ".nlalab.lock", "plots", "report.html")) -> dict:
    """path -> (mtime_ns, size) of every file under d, outside the sweep's own bookkeeping."""
    out = {}
    for p in sorted(Path(d).rglob("*")):
        rel = p.relative_to(d)
        if p.is_file() and rel.parts[0] not in skip:
            st = os.stat(p)
            out[str(rel)] = (st.st_mtime_ns, st.st_size)
    return out
