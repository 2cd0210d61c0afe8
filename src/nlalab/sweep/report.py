"""A sweep directory as tables and a page: what ``nlalab compare SWEEP_DIR`` prints and what the HTML
report of a sweep shows.

- the grid table: one row per cell (its axis values, state) with overall fve_nrm, recall and the gaps;
- failed or unfinished cells with their one-line errors (from ``status.json``);
- along each axis with more than one value, once per combination of the other axes: the comparison of
  ``nlalab compare`` (each quantity's value per cell, the pattern verdict along the axis, and the paired
  differences between consecutive cells).
"""

from __future__ import annotations

import base64
import html as _html
import time
from pathlib import Path
from typing import Optional, Union

from nlalab.format import Table, fmt_num, fmt_p
from nlalab.sweep.grid import read_resolved
from nlalab.sweep.results import compare_sweep, sweep_plots, sweep_table
from nlalab.sweep.status import read_status

GRID_METRICS = ("fve_nrm", "fve_nrm_seed", "cos", "recall", "recall_gap_within", "fve_nrm_gap_within")
VERDICT_ROWS = ("fve_nrm", "fve_nrm_seed", "cos", "recall", "spread.recall", "perm.gap_within", "recon.gap_within",
                "diff.fve_nrm", "diff.recall")


def _cell_text(r) -> str:
    if r is None:
        return "—"
    if r["metric"].endswith(("gap_within", "gap_cross")):
        return f"{fmt_num(r['mean'], 3, True)} p={fmt_p(r['p'])}"
    lo, hi = r["lo"], r["hi"]
    ci = "" if lo is None or hi is None or lo != lo or hi != hi else f" [{fmt_num(lo)}, {fmt_num(hi)}]"
    return f"{fmt_num(r['mean'])}{ci}"


def sweep_tables(sweep_dir: Union[str, Path], *, n_boot: int = 2000, seed: int = 0) -> list[Table]:
    """The grid table, the failures table (when any cell failed) and one verdict table per axis and group."""
    from nlalab.report.compare import cell_text

    d = Path(sweep_dir)
    sw = read_resolved(d)
    axes = list(sw.axes)
    df = sweep_table(d)
    status = (read_status(d).get("cells") or {})
    by = {(r["cell"], r["metric"]): r for r in df.to_dict("records")}
    mets = [m for m in GRID_METRICS if (df["metric"] == m).any()]
    rows = []
    for c in sw.cells:
        state = "done" if any(k[0] == c.name for k in by) else (status.get(c.name) or {}).get("state", "pending")
        rows.append([c.name, *[str(c.values.get(a)) for a in axes], state, *[_cell_text(by.get((c.name, m)))
                                                                            for m in mets]])
    tables = [Table("Sweep grid", ["cell", *axes, "state", *mets], rows,
                    notes=["Means with 95% cluster-bootstrap intervals over items; gaps (above the permutation "
                           "floors) with their permutation p-values. sweep.csv holds every metric."], key="sweep_grid")]
    bad = [[n, s.get("state", ""), s.get("error", "")] for n, s in status.items() if s.get("state") == "failed"]
    if bad:
        tables.append(Table("Failed cells", ["cell", "state", "error"], bad, key="sweep_failed", wrap=True,
                            notes=["Rerun the same `nlalab sweep` command: finished cells are skipped, these resume."]))
    for axis, values in sw.axes.items():
        if len(values) < 2:
            continue
        for g in compare_sweep(d, axis=axis, n_boot=n_boot, seed=seed):
            cmp = g["comparison"]
            grp = ", ".join(f"{k}={v}" for k, v in g["group"].items())
            body = []
            for row in cmp["rows"]:
                if row["key"] not in VERDICT_ROWS or all(c is None or c.get("mean") is None for c in row["values"]):
                    continue
                body.append([row["label"], *[cell_text(c, row) for c in row["values"]],
                             (row.get("pattern") or {}).get("text", "")])
            tables.append(Table(f"Along {axis}" + (f" ({grp})" if grp else ""), ["quantity", *cmp["names"], "pattern"],
                                body, notes=list(cmp["warnings"]), key=f"sweep_along_{axis}"))
    return tables


def sweep_markdown(sweep_dir: Union[str, Path], *, n_boot: int = 2000, seed: int = 0) -> str:
    """``nlalab compare SWEEP_DIR``: every table of :func:`sweep_tables` as Markdown."""
    d = Path(sweep_dir)
    head = f"# Sweep {d.name}\n\n"
    return head + "\n".join(t.to_markdown(2) for t in sweep_tables(d, n_boot=n_boot, seed=seed))


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_html.escape(caption)} (also <code>plots/{_html.escape(path.name)}</code>)</figcaption>"
            "</figure>")


def sweep_html(sweep_dir: Union[str, Path], plots_dir: Optional[Union[str, Path]] = None, *, n_boot: int = 2000,
               seed: int = 0) -> str:
    """The sweep's section of an HTML page: metric-vs-axis plots (drawn into ``plots_dir``, default
    ``SWEEP_DIR/plots``) and every table."""
    d = Path(sweep_dir)
    figs = sweep_plots(d, Path(plots_dir) if plots_dir is not None else d / "plots")
    parts = [_img(p, f"{name.removeprefix('sweep_')}: metric vs axis, 95% intervals") for name, p in figs.items()]
    parts += [t.to_html(2) for t in sweep_tables(d, n_boot=n_boot, seed=seed)]
    return "\n".join(parts)


def write_sweep_report(sweep_dir: Union[str, Path], out: Optional[Union[str, Path]] = None, *, n_boot: int = 2000,
                       seed: int = 0) -> Path:
    """``SWEEP_DIR/report.html`` (or ``out``): a standalone page of :func:`sweep_html`; returns its path."""
    from nlalab.report.html import CSS
    from nlalab.rundir.io import atomic_write_text

    d = Path(sweep_dir)
    body = sweep_html(d, n_boot=n_boot, seed=seed)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>nlalab sweep {_html.escape(d.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>Sweep {_html.escape(d.name)}</h1>"
            f"<p class='note'>{_html.escape(str(d))} · generated {time.strftime('%Y-%m-%d %H:%M:%S %z')}</p>"
            f"{body}</body></html>")
    target = Path(out) if out is not None else d / "report.html"
    atomic_write_text(target, page)
    return target


__all__ = ["sweep_tables", "sweep_markdown", "sweep_html", "write_sweep_report"]
