"""``--executor slurm``: the cells as one SLURM job array through submitit (partition, time, GPUs, CPUs
and memory per cell). ``cluster="local"`` uses submitit's local executor (tests, one machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from nlalab.errors import UsageError
from nlalab.sweep.cell import forwarded_env, run_cell
from nlalab.sweep.executors import OnResult
from nlalab.sweep.status import one_line


def run(sweep_dir: Union[str, Path], names: list[str], on_result: OnResult, *, resources=None,
        partition: Optional[str] = None, time_min: int = 240, cluster: Optional[str] = None,
        array_parallelism: Optional[int] = None, **_: object) -> None:
    try:
        import submitit
    except ImportError:
        raise UsageError("--executor slurm needs submitit. Fix: pip install 'nlalab[sweep]' (or pip install "
                         "submitit).") from None
    d = Path(sweep_dir).resolve()
    if cluster is None and submitit.AutoExecutor.which() != "slurm":
        raise UsageError("--executor slurm: no SLURM here (sbatch not found). Fix: run on a SLURM login node, or "
                         "pass --cluster local to run the cells as local jobs on this machine.")
    try:
        ex = submitit.AutoExecutor(folder=str(d / ".submitit"), cluster=cluster)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"submitit found no SLURM here ({one_line(e)}). Fix: run on a SLURM login node, or use "
                         "--executor local or ray.") from None
    params: dict = {"timeout_min": int(time_min), "name": f"nlalab-sweep-{d.name}"}
    if resources is not None:
        params["cpus_per_task"] = max(1, int(round(resources.num_cpus)))
        if resources.num_gpus:
            params["gpus_per_node"] = int(resources.num_gpus)
        if resources.memory_gb:
            params["mem_gb"] = resources.memory_gb
    if partition:
        params["slurm_partition"] = partition
    if array_parallelism:
        params["slurm_array_parallelism"] = int(array_parallelism)
    ex.update_parameters(**params)
    env = forwarded_env()
    jobs = ex.map_array(run_cell, [str(d)] * len(names), names, [env] * len(names))
    for job, name in zip(jobs, names):
        try:
            out = job.result()
        except Exception as e:  # noqa: BLE001 - a job killed, timed out or lost: that cell failed
            out = {"name": name, "state": "failed", "error": f"job {job.job_id}: " + one_line(e)}
        on_result(out)
