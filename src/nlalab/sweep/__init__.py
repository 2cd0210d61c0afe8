"""Sweeps: a grid of studies (pairs, positions, seeds, training checkpoints, ...), each cell a normal run
directory under one sweep directory, run by an existing engine (in process, Ray, SLURM through submitit).

``grid`` reads the sweep file and names the cells, ``cell`` runs one, ``executors`` schedule them,
``status`` records where each stands, ``results`` tabulates and plots across the grid, ``cli`` is the
``nlalab sweep`` command (``sweep_app``). See docs/sweep.md.
"""

from __future__ import annotations

from nlalab.lazy import lazy_getattr

_EXPORTS = {"run_sweep": "run", "sweep_table": "results", "sweep_plots": "results", "compare_sweep": "results",
            "write_tables": "results", "is_sweep_dir": "grid", "load_sweep_file": "grid", "resolve": "grid",
            "expand_checkpoints": "grid", "read_status": "status", "run_cell": "cell",
            "write_training_trace": "trace", "trace_rows": "trace"}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr('nlalab.sweep', _EXPORTS)
