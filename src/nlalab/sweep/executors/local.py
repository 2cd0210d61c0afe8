"""``--executor local``: cells one after another in this process, or one subprocess per visible GPU."""

from __future__ import annotations

import math
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Union

from nlalab.errors import UsageError
from nlalab.sweep.cell import run_cell
from nlalab.sweep.executors import OnResult
from nlalab.sweep.status import read_cell_record


def parse_gpus(gpus: Optional[str]) -> list[str]:
    """``auto`` (every visible GPU), ``none``, a count (``2``: GPUs 0 and 1) or a list (``0,3``) -> GPU ids.
    Fewer than two ids means cells run one after another in this process."""
    g = (gpus or "auto").strip().lower()
    if g == "none":
        return []
    if g == "auto":
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        if vis is not None:
            return [x for x in vis.split(",") if x.strip() and x.strip() != "-1"]
        try:
            import torch

            return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        except ImportError:  # pragma: no cover - torch is a dependency
            return []
    if g.isdigit():
        return [str(i) for i in range(int(g))]
    ids = [x.strip() for x in g.split(",") if x.strip()]
    if not ids or not all(x.isdigit() for x in ids):
        raise UsageError(f"--gpus {gpus!r}: expected auto, none, a count or a list of GPU ids such as 0,1.")
    return ids


def gpu_slots(ids: list[str], per_cell: float = 1) -> list[str]:
    """Visible GPU ids grouped into one ``CUDA_VISIBLE_DEVICES`` value per concurrent cell
    (``resources.num_gpus`` each, at least one); GPUs left over are unused."""
    n = max(1, math.ceil(per_cell or 1))
    return [",".join(ids[i:i + n]) for i in range(0, len(ids) - n + 1, n)]


def _subprocess_cell(sweep_dir: Path, name: str, gpu: str) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    log = sweep_dir / ".cells" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        rc = subprocess.call([sys.executable, "-m", "nlalab.sweep.cell", str(sweep_dir), name], env=env,
                             stdout=f, stderr=subprocess.STDOUT)
    rec = read_cell_record(sweep_dir, name)
    if rec.get("state") in ("done", "failed") and rec.get("finished_at"):
        out = {"name": name, "state": rec["state"]}
        if rec["state"] == "failed":
            out["error"] = rec.get("error") or f"exit code {rc}"
        return out
    if rc == 0:  # finished earlier: the worker skipped it
        return {"name": name, "state": "skipped"}
    return {"name": name, "state": "failed", "error": f"worker process exited with code {rc} on GPU {gpu} "
                                                      f"(log: {log})"}


def run(sweep_dir: Union[str, Path], names: list[str], on_result: OnResult, *, gpus: Optional[str] = "auto",
        resources=None, **_: object) -> None:
    d = Path(sweep_dir)
    ids = gpu_slots(parse_gpus(gpus), resources.num_gpus if resources is not None else 1)
    if len(ids) < 2:
        for n in names:
            on_result(run_cell(d, n))
        return
    free: "queue.Queue[str]" = queue.Queue()
    for i in ids:
        free.put(i)
    lock = threading.Lock()

    def one(name: str) -> None:
        gpu = free.get()
        try:
            out = _subprocess_cell(d, name, gpu)
        finally:
            free.put(gpu)
        with lock:
            on_result(out)

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        for f in [pool.submit(one, n) for n in names]:
            f.result()
