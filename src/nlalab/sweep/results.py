"""Results across a grid: one table row per (cell, metric) with its 95% interval, plots of a metric against
each swept axis, and the cross-run comparison along an axis.

The table (:func:`sweep_table`, written as ``sweep.csv`` and ``sweep.parquet``) has a column per axis of
the grid (``seed``, ``positions``, ``checkpoint``, ...), then ``metric``, ``mean``, ``lo``, ``hi``, ``n``
(rows the mean is over), ``p`` (gaps: the permutation p-value, which is their uncertainty; no interval).
Metrics: overall ``fve_nrm``, ``fve_nrm_seed``, ``cos``, ``recall``, ``hit`` (cluster-bootstrap intervals
from each cell's results.json), per-category ``fve_nrm.<cat>`` and ``recall.<cat>``, the keyword-recall
gaps above the permutation floors (``recall_gap_within``, ``recall_gap_cross``) and, when the cell ran the
recon_permutation control, the item-specific reconstruction gaps (``fve_nrm_gap_within``,
``fve_nrm_gap_cross``). Only finished cells have rows; the status file lists the others.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from nlalab.errors import UsageError
from nlalab.sweep.grid import read_resolved
from nlalab.sweep.status import cell_finished

CSV = "sweep.csv"
PARQUET = "sweep.parquet"
OVERALL = "OVERALL"
OVERALL_METRICS = ("fve_nrm", "fve_nrm_seed", "cos", "recall", "hit")
CATEGORY_METRICS = ("fve_nrm", "recall")
PLOT_METRICS = ("fve_nrm", "recall", "fve_nrm_gap_within", "recall_gap_within")
COLUMNS = ("cell", "metric", "mean", "lo", "hi", "n", "p")


def _num(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def finished_cells(sweep_dir: Union[str, Path]) -> list[tuple[Any, Path]]:
    """(cell, run dir) of every finished cell, in grid order."""
    d = Path(sweep_dir)
    sw = read_resolved(d)
    return [(c, d / c.name) for c in sw.cells if cell_finished(d / c.name, c.identity())]


def cell_metrics(results: dict) -> list[dict]:
    """The table's metric rows of one run's results.json (current schema)."""
    out: list[dict] = []

    def est(metric: str, e: Optional[dict]) -> None:
        if isinstance(e, dict) and _num(e.get("mean")) is not None:
            out.append({"metric": metric, "mean": _num(e["mean"]), "lo": _num(e.get("lo")), "hi": _num(e.get("hi")),
                        "n": e.get("n"), "p": None})

    def gap(metric: str, block: Optional[dict], kind: str) -> None:
        if isinstance(block, dict) and _num(block.get(f"gap_{kind}")) is not None:
            out.append({"metric": metric, "mean": _num(block[f"gap_{kind}"]), "lo": None, "hi": None,
                        "n": block.get("n_items"), "p": _num(block.get(f"p_{kind}"))})

    pc = results.get("per_category") or {}
    for m in OVERALL_METRICS:
        est(m, (pc.get(OVERALL) or {}).get(m))
    for cat in results.get("categories") or [c for c in pc if c != OVERALL]:
        for m in CATEGORY_METRICS:
            est(f"{m}.{cat}", (pc.get(cat) or {}).get(m))
    controls = results.get("controls") or {}
    rp = (controls.get("recall_permutation") or {}).get("overall")
    for kind in ("within", "cross"):
        gap(f"recall_gap_{kind}", rp, kind)
    recon = (((controls.get("recon_permutation") or {}).get("metrics") or {}).get("fve_nrm") or {}).get("overall")
    for kind in ("within", "cross"):
        gap(f"fve_nrm_gap_{kind}", recon, kind)
    return out


def sweep_table(sweep_dir: Union[str, Path]):
    """A pandas DataFrame: one row per finished cell and metric (see the module docstring)."""
    import pandas as pd

    from nlalab.rundir.load import load_run

    d = Path(sweep_dir)
    axes = list(read_resolved(d).axes)
    rows = []
    for cell, run_dir in finished_cells(d):
        res = load_run(run_dir).results_dict()
        for r in cell_metrics(res):
            rows.append({"cell": cell.name, **{a: cell.values.get(a) for a in axes}, **r})
    cols = ["cell", *axes, *COLUMNS[1:]]
    df = pd.DataFrame(rows, columns=cols)
    for a in axes:  # one type per column (positions mixes 'last' and indices): text, for csv and parquet alike
        df[a] = df[a].map(lambda v: None if v is None else str(v))
    return df


def write_tables(sweep_dir: Union[str, Path]) -> dict[str, Path]:
    """``sweep.csv`` and (with pyarrow) ``sweep.parquet``; returns the paths written."""
    from nlalab.rundir.io import atomic_write_bytes, atomic_write_text

    d = Path(sweep_dir)
    df = sweep_table(d)
    out = {"csv": d / CSV}
    atomic_write_text(d / CSV, df.to_csv(index=False))
    try:
        import io

        import pyarrow  # noqa: F401

        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(d / PARQUET, buf.getvalue())
        out["parquet"] = d / PARQUET
    except ImportError:
        pass  # parquet needs pyarrow (pip install 'nlalab[sweep]'); the csv holds the same rows
    return out


# ---------------------------------------------------------------------------------------------- plots


def _axis_order(values: Sequence[Any]) -> list[str]:
    return [str(v) for v in values]


def sweep_plots(sweep_dir: Union[str, Path], plots_dir: Union[str, Path],
                metrics: Sequence[str] = PLOT_METRICS) -> dict[str, Path]:
    """For each axis with more than one value: ``sweep_<axis>.png`` (and .svg), one panel per metric, the
    metric's mean and 95% interval against the axis, one line per combination of the other axes."""
    from nlalab import plotting

    d = Path(sweep_dir)
    sw = read_resolved(d)
    df = sweep_table(d)
    if df.empty:
        return {}
    figs: dict[str, Path] = {}
    for axis, values in sw.axes.items():
        if len(values) < 2:
            continue
        others = [a for a in sw.axes if a != axis]
        mets = [m for m in metrics if (df["metric"] == m).any()]
        if not mets:
            continue
        xs = _axis_order(values)
        pyplot = plotting.plt()
        fig, axs = pyplot.subplots(1, len(mets), figsize=(3.6 * len(mets), 3.0), squeeze=False)
        for ax, m in zip(axs[0], mets):
            sub = df[df["metric"] == m]
            groups = list(sub.groupby(others, dropna=False, sort=False)) if others else [((), sub)]
            for gi, (key, g) in enumerate(groups):
                dodge = 0.08 * (gi - (len(groups) - 1) / 2) if len(groups) > 1 else 0.0  # error bars side by side
                key = key if isinstance(key, tuple) else (key,)
                label = ", ".join(f"{a}={v}" for a, v in zip(others, key)) or m
                pts = {str(r[axis]): r for _, r in g.iterrows()}
                xi = [i for i, x in enumerate(xs) if x in pts]
                ys = [pts[xs[i]]["mean"] for i in xi]
                lo = [pts[xs[i]]["lo"] for i in xi]
                hi = [pts[xs[i]]["hi"] for i in xi]
                yerr = [[0 if (l is None or l != l) else y - l for y, l in zip(ys, lo)],
                        [0 if (h is None or h != h) else h - y for y, h in zip(ys, hi)]]
                ax.errorbar([x + dodge for x in xi], ys, yerr=yerr, marker="o", capsize=3, label=label)
            ax.set_xticks(range(len(xs)))
            ax.set_xticklabels(xs, rotation=30 if max(len(x) for x in xs) > 6 else 0)
            ax.set_xlabel(axis)
            ax.set_title(m)
            if m.startswith(("fve_nrm_gap", "recall_gap")):
                ax.axhline(0, color="#888", lw=0.8)
        if others:
            plotting.legend_below(axs[0][0], ncol=2)
        figs[f"sweep_{axis}"] = plotting.save(fig, Path(plots_dir), f"sweep_{axis}")
    return figs


# -------------------------------------------------------------------------------------------- compare


def compare_sweep(sweep_dir: Union[str, Path], axis: Optional[str] = None, **kw: Any) -> list[dict]:
    """``compare_runs`` along one axis (default: the first with more than one value), once per combination
    of the other axes: ``[{"group": {axis: value}, "axis": axis, "comparison": <compare_runs dict>}]``.
    Runs at different positions or layers cannot be paired; along such an axis they are compared unpaired
    (``allow_mismatch``) with the difference stated in the comparison's warnings."""
    from nlalab.report.compare import compare_runs

    d = Path(sweep_dir)
    sw = read_resolved(d)
    multi = [a for a, v in sw.axes.items() if len(v) > 1]
    if axis is None:
        if not multi:
            raise UsageError(f"{d}: the sweep has no axis with two values to compare along.")
        axis = multi[0]
    if axis not in sw.axes:
        raise UsageError(f"{d}: no axis {axis!r}; axes: {', '.join(sw.axes) or 'none'}.")
    done = {c.name: p for c, p in finished_cells(d)}
    others = [a for a in sw.axes if a != axis]
    groups: dict[tuple, list] = {}
    for c in sw.cells:
        if c.name in done:
            groups.setdefault(tuple(str(c.values.get(a)) for a in others), []).append(c)
    out = []
    for key, cells in groups.items():
        order = {str(v): i for i, v in enumerate(sw.axes[axis])}
        cells.sort(key=lambda c: order.get(str(c.values.get(axis)), 0))
        if len(cells) < 2:
            continue
        kw2 = dict(kw)
        kw2.setdefault("allow_mismatch", axis in ("positions", "layer", "pair", "checkpoint"))
        cmp = compare_runs([done[c.name] for c in cells], names=[f"{axis}={c.values.get(axis)}" for c in cells],
                           **kw2)
        out.append({"group": dict(zip(others, key)), "axis": axis, "comparison": cmp})
    return out


__all__ = ["sweep_table", "write_tables", "sweep_plots", "compare_sweep", "cell_metrics", "finished_cells",
           "CSV", "PARQUET"]
