"""Matplotlib helpers shared by every figure (core report figures and the controls' own): Agg backend,
one style, PNG at 200 dpi beside a deterministic SVG, error bars from stored intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

PALETTE = {"fve_nrm": "#1f77b4", "fve_nrm_seed": "#9ecae1", "recall": "#d62728", "hit": "#fc9272",
           "real": "#2b2b2b", "within": "#ff7f0e", "cross": "#2ca02c", "random": "#9467bd", "cos": "#17becf"}
DPI = 200


def plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    pyplot.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
                            "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "nlalab"})
    return pyplot


def save(fig, plots_dir: Path, name: str) -> Path:
    """``plots_dir/name.png`` (200 dpi) and ``name.svg``; returns the PNG path."""
    pyplot = plt()
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    png = plots_dir / f"{name}.png"
    fig.savefig(png, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(plots_dir / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
    pyplot.close(fig)
    return png


def err(e: Optional[dict]) -> tuple[float, float, float]:
    """(mean, minus, plus) for an errorbar; NaN and zeros when missing."""
    if not e or e.get("mean") is None:
        return np.nan, 0.0, 0.0
    m = float(e["mean"])
    lo = float(e["lo"]) if e.get("lo") is not None else m
    hi = float(e["hi"]) if e.get("hi") is not None else m
    return m, max(0.0, m - lo), max(0.0, hi - m)


def legend_below(ax, ncol: int = 2, fontsize: int = 8) -> None:
    """Legend under the axes, so it never hides a bar, a line or a tick label."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, frameon=False, fontsize=fontsize, loc="upper center",
                  bbox_to_anchor=(0.5, -0.18), ncol=max(1, min(ncol, len(handles))))


def bars(ax, labels, series: list[tuple[str, list[Optional[dict]], str]], ylabel: str, zero_line: bool = True,
         rotation: int = 0) -> None:
    """Grouped bars with 95% interval error bars: one group per label, one bar per series."""
    x = np.arange(len(labels))
    w = 0.8 / max(1, len(series))
    for k, (name, ests, color) in enumerate(series):
        vals = [err(e) for e in ests]
        m = [v[0] for v in vals]
        yerr = np.array([[v[1] for v in vals], [v[2] for v in vals]])
        ax.bar(x + (k - (len(series) - 1) / 2) * w, m, w, yerr=yerr, capsize=3, color=color, label=name,
               edgecolor="white", linewidth=0.5, error_kw={"elinewidth": 1, "ecolor": "#333"})
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=rotation, ha="right" if rotation else "center")
    ax.set_ylabel(ylabel)
    if zero_line:
        ax.axhline(0, color="#888", linewidth=0.6)
    legend_below(ax, ncol=len(series))


def min_span(ax, ys: list[float], tol: float) -> None:
    """Show at least ± tol around the data, so that a change within the tolerance also looks flat."""
    ys = [y for y in ys if y is not None and np.isfinite(y)]
    if not ys:
        return
    lo, hi = min(ys), max(ys)
    if hi - lo < 2 * tol:
        mid = (hi + lo) / 2
        ax.set_ylim(mid - 1.25 * tol, mid + 1.25 * tol)
