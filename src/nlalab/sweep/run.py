"""The sweep driver: resolve the file, write ``sweep.yaml``, hand the unfinished cells to an executor,
keep ``status.json`` current, write the tables. Cells already finished are not touched (their files keep
their bytes and mtimes); unfinished ones resume through their run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Union

from nlalab.rundir.io import dir_lock
from nlalab.sweep.executors import get_executor
from nlalab.sweep.grid import Sweep, load_sweep_file, resolve, write_resolved
from nlalab.sweep.status import StatusFile, cell_finished, read_cell_record


def run_sweep(sweep: Union[str, Path, Sweep], out: Union[str, Path], executor: str = "local",
              on_event: Optional[Any] = None, **options: Any) -> dict:
    """Run every cell of ``sweep`` (a sweep file or a resolved :class:`Sweep`) into ``out``.

    ``options`` go to the executor (local: ``gpus``; ray: ``ray_address``, ``ray_num_cpus``, ``retries``;
    slurm: ``partition``, ``time_min``, ``cluster``, ``array_parallelism``). Returns a summary: ``cells``,
    ``ran`` (cells this invocation ran), ``skipped`` (finished before), ``failed`` (name -> one-line error),
    ``status`` (path), ``tables`` (paths)."""
    say = on_event or (lambda s: None)
    run = get_executor(executor)
    sw = sweep if isinstance(sweep, Sweep) else resolve(load_sweep_file(sweep), source=str(sweep))
    d = Path(out)
    with dir_lock(d, wait=0, what="nlalab sweep"):
        merged = write_resolved(d, sw)
        mine = {c.name for c in sw.cells}
        status = StatusFile(d, [c.name for c in merged.cells], executor)
        todo, skipped = [], []
        for c in merged.cells:
            if cell_finished(d / c.name, c.identity()):
                status.cells[c.name] = {"state": "done", "note": "finished before this invocation"}
                skipped.append(c.name)
            elif c.name in mine:
                todo.append(c.name)
            else:
                status.cells[c.name] = {"state": "pending", "note": "not in this sweep file"}
        status.write()
        say(f"{len(merged.cells)} cells: {len(skipped)} finished before, {len(todo)} to run ({executor})")
        t0 = time.time()

        def on_result(r: dict) -> None:
            state = "done" if r.get("state") in ("done", "skipped") else "failed"
            status.set(r["name"], state, r.get("error"))
            say(f"{r['name']}: {state}" + (f" ({r['error']})" if r.get("error") else ""))

        if todo:
            run(d, todo, on_result, resources=sw.resources, **options)
        for n in todo:  # a worker that vanished without a word (e.g. a lost subprocess)
            if status.cells[n]["state"] in ("pending", "running"):
                rec = read_cell_record(d, n)
                status.set(n, "failed", rec.get("error") or f"the executor returned no result (last record: "
                                                          f"{rec.get('state', 'none')})")
        from nlalab.sweep.results import write_tables

        tables = write_tables(d)
        return {"cells": [c.name for c in merged.cells], "ran": todo, "skipped": skipped,
                "failed": status.failed(), "status": str(status.path), "tables": {k: str(v) for k, v in tables.items()},
                "elapsed_s": round(time.time() - t0, 2)}


__all__ = ["run_sweep"]
