"""``--executor ray``: each cell a Ray task with the resources of ``resources:``, on an existing cluster
(``--ray-address``) or a local instance; Ray retries a task whose worker died (``--retries``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from nlalab.errors import UsageError
from nlalab.sweep.cell import forwarded_env, run_cell
from nlalab.sweep.executors import OnResult
from nlalab.sweep.status import one_line


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray. Fix: pip install 'nlalab[sweep]' (or pip install ray).") from None
    return ray


def run(sweep_dir: Union[str, Path], names: list[str], on_result: OnResult, *, resources=None,
        ray_address: Optional[str] = None, ray_num_cpus: Optional[int] = None, retries: int = 2,
        **_: object) -> None:
    ray = _ray()
    started = False
    if not ray.is_initialized():
        kw = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if ray_address:
            kw["address"] = ray_address
        elif ray_num_cpus:
            kw["num_cpus"] = int(ray_num_cpus)
        try:
            ray.init(**kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UsageError(f"could not start or reach Ray ({one_line(e)}). Fix: check --ray-address "
                             "(omit it for a local instance).") from None
        started = True
    try:
        opts = {"max_retries": int(retries), "retry_exceptions": False}
        if resources is not None:
            opts["num_cpus"] = resources.num_cpus
            opts["num_gpus"] = resources.num_gpus
            if resources.memory_gb:
                opts["memory"] = int(resources.memory_gb * 2 ** 30)
        task = ray.remote(run_cell).options(**opts)
        env = forwarded_env()
        refs = {task.remote(str(Path(sweep_dir).resolve()), n, env): n for n in names}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                name = refs[ref]
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as e:  # worker lost beyond the retries, task cancelled, ...
                    out = {"name": name, "state": "failed",
                           "error": f"Ray task failed after {retries} retr{'y' if retries == 1 else 'ies'}: "
                                    + one_line(e)}
                on_result(out)
    finally:
        if started:
            ray.shutdown()
