"""``nlalab sweep FILE --out DIR --executor local|ray|slurm``: a typer sub-app (``sweep_app``) that
``nlalab.cli`` mounts with ``app.add_typer(sweep_app, name="sweep")``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

# the same words as nlalab.cli's EXIT_CODES_HELP (not imported: nlalab.cli imports this module to mount it)
EXIT_CODES_HELP = ("Exit codes: 0 ok; 1 a check failed (validate); 2 a usage error (bad flag, setting or input "
                   "file); 3 a runtime error (file fault, lock held, model failed to load; here also: a cell failed).")
EXAMPLES = ("nlalab sweep grid.yaml --out sweeps/pos_seed --dry-run",
            "nlalab sweep grid.yaml --out sweeps/pos_seed --executor local",
            "nlalab sweep grid.yaml --out sweeps/pos_seed --executor ray --ray-address auto",
            "nlalab sweep grid.yaml --out sweeps/pos_seed --executor slurm --partition gpu --time 120")
sweep_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                        help="Run a grid of studies (docs/sweep.md): each cell a run directory under --out; a "
                             "rerun skips finished cells and resumes the others.",
                        epilog="\n\n".join(["Examples:", *[f"  {x}" for x in EXAMPLES], EXIT_CODES_HELP]))


def _fail(e: Exception) -> None:
    from nlalab.errors import EXIT_RUNTIME

    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(getattr(e, "exit_code", EXIT_RUNTIME))


@sweep_app.callback(invoke_without_command=True, context_settings={"allow_interspersed_args": True})
def sweep(
    file: Path = typer.Argument(..., help="Sweep file (YAML): RunConfig fields, grid:, checkpoints:, resources:."),
    out: Path = typer.Option(..., "--out", help="Sweep directory (one run directory per cell inside)."),
    executor: str = typer.Option("local", "--executor", help="local, ray or slurm."),
    gpus: str = typer.Option("auto", "--gpus", help="local: auto (every visible GPU: one cell per GPU), none, a "
                                                    "count, or ids such as 0,1."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="ray: an existing cluster (default: "
                                                                          "start a local instance)."),
    ray_num_cpus: Optional[int] = typer.Option(None, "--ray-num-cpus", help="ray: CPUs of the local instance."),
    retries: int = typer.Option(2, "--retries", help="ray: retries of a cell whose worker was lost."),
    partition: Optional[str] = typer.Option(None, "--partition", help="slurm: partition."),
    time_min: int = typer.Option(240, "--time", help="slurm: time limit per cell, minutes."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="slurm: submitit cluster (default: detect "
                                                                  "SLURM; 'local' runs the jobs here)."),
    array_parallelism: Optional[int] = typer.Option(None, "--array-parallelism",
                                                    help="slurm: at most this many cells at once."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the cells (name and values) and stop; writes "
                                                          "nothing."),
    report: bool = typer.Option(True, "--report/--no-report", help="Draw metric-vs-axis plots (OUT/plots) and "
                                                                   "write OUT/report.html."),
) -> None:
    from nlalab.errors import NLALabError
    from nlalab.sweep.executors import EXECUTORS

    try:
        if executor not in EXECUTORS:
            from nlalab.errors import UsageError

            raise UsageError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}.")
        if dry_run:
            from nlalab.sweep.grid import load_sweep_file, resolve

            sw = resolve(load_sweep_file(file), source=str(file))
            for c in sw.cells:
                typer.echo(f"{out / c.name}\t" + " ".join(f"{k}={v}" for k, v in c.values.items()))
            typer.echo(f"{len(sw.cells)} cells", err=True)
            return
        from nlalab.sweep.run import run_sweep

        opts = {"local": {"gpus": gpus},
                "ray": {"ray_address": ray_address, "ray_num_cpus": ray_num_cpus, "retries": retries},
                "slurm": {"partition": partition, "time_min": time_min, "cluster": cluster,
                          "array_parallelism": array_parallelism}}[executor]
        summary = run_sweep(file, out, executor, on_event=lambda s: typer.echo(s, err=True), **opts)
        if report:
            from nlalab.sweep.report import write_sweep_report

            typer.echo(f"report: {write_sweep_report(out)}", err=True)
        n, failed = len(summary["cells"]), summary["failed"]
        typer.echo(f"{n - len(failed)}/{n} cells finished; {len(summary['ran'])} run now, "
                   f"{len(summary['skipped'])} finished before. Table: {summary['tables'].get('csv')}")
        if failed:
            raise NLALabError(f"{len(failed)} of {n} cells failed ({'; '.join(f'{k}: {v}' for k, v in failed.items())}"
                              f"). Fix: see {summary['status']}; rerun the same command to resume them.")
    except NLALabError as e:
        _fail(e)


__all__ = ["sweep_app"]
