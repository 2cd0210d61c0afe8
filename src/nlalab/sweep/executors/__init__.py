"""Executors: how the cells of a sweep get run, each on an existing engine (no scheduler of our own).

Every executor takes the sweep directory, the names of the cells to run, and a callback
``on_result({"name", "state", "error"?})`` called once per cell as it ends; cells are run by
:func:`nlalab.sweep.cell.run_cell`, so they share nothing but the sweep directory and the model files.

- ``local``: cells one after another in this process, or one subprocess per visible GPU
  (``CUDA_VISIBLE_DEVICES`` pinned per cell);
- ``ray``: each cell a Ray task with its CPU/GPU/memory resources, retried by Ray on worker loss;
- ``slurm``: each cell a job of a SLURM array through submitit (``cluster="local"``: submitit's local
  executor, for tests and single machines).
"""

from __future__ import annotations

from typing import Callable

EXECUTORS = ("local", "ray", "slurm")
OnResult = Callable[[dict], None]


def get_executor(name: str):
    """The ``run`` function of an executor module."""
    from nlalab.errors import UsageError

    if name == "local":
        from nlalab.sweep.executors.local import run
    elif name == "ray":
        from nlalab.sweep.executors.ray import run
    elif name == "slurm":
        from nlalab.sweep.executors.slurm import run
    else:
        raise UsageError(f"unknown executor {name!r}. Fix: use one of {', '.join(EXECUTORS)}.")
    return run


__all__ = ["EXECUTORS", "get_executor", "OnResult"]
