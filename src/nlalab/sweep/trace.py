"""The training trace (issue 19): a checkpoint sweep's fve_nrm, item-specific gap and keyword recall against
training step, as one figure and one Markdown table.

Input: a sweep directory whose grid has the ``checkpoint`` axis (``checkpoints:`` in the sweep file,
expanded from a ``nlalab train`` folder by :func:`nlalab.sweep.grid.expand_checkpoints`). Each finished cell
is a run directory; its results.json gives, per checkpoint:

- ``fve_nrm``: ``per_category.OVERALL.fve_nrm`` (mean and 95 % cluster-bootstrap interval);
- the item-specific gap: ``controls.recon_permutation.metrics.fve_nrm.overall.gap_within`` (real fve_nrm
  minus the within-category permutation floor; ``gap_within_ci``, ``p_within``), the study's test of
  item-specific reconstruction (n/a when the cell did not run the ``recon_permutation`` control);
- keyword recall and hit rate: ``per_category.OVERALL.{recall,hit}``; the within-category floor and its p
  from ``controls.recall_permutation.overall`` (n/a without that control).

Training order and step: ``init`` (before training), ``sft`` (SFT end = RL step 0), ``rl_step_N`` (RL step
N), ``final`` (``pair/``: the step of the checkpoint it was exported from, read from the training folder's
``pair/checkpoint.json``, else ``rl.steps`` of its config.json). Missing values are "n/a", never 0.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional, Union

from nlalab.errors import UsageError
from nlalab.sweep.grid import CHECKPOINT_AXIS, read_resolved
from nlalab.sweep.results import finished_cells
from nlalab.sweep.results import _num  # one finite-number reader for the sweep tables

STAGE_ORDER = {"init": 0, "sft": 1, "rl": 2, "final": 3}


def _est(e: Any) -> Optional[dict]:
    if isinstance(e, dict) and _num(e.get("mean")) is not None:
        return {"mean": _num(e["mean"]), "lo": _num(e.get("lo")), "hi": _num(e.get("hi"))}
    return None


def _final_step(fields: dict) -> Optional[int]:
    """The RL step of ``pair/`` (the training folder is two levels above its av/)."""
    av = fields.get("av")
    if not av:
        return None
    train = Path(av).parent.parent
    rec = train / "pair" / "checkpoint.json"
    try:
        if rec.is_file():
            step = json.loads(rec.read_text(encoding="utf-8")).get("step")
            if step is not None:
                return int(step)
        cfg = train / "config.json"
        if cfg.is_file():
            steps = ((json.loads(cfg.read_text(encoding="utf-8")) or {}).get("rl") or {}).get("steps")
            return int(steps) if steps is not None else None
    except (OSError, ValueError, TypeError):
        return None
    return None


def _stage_step(label: str, fields: dict) -> tuple[str, Optional[int]]:
    name = label.rsplit(":", 1)[-1]  # several training folders: "<folder>:<label>"
    if name == "init":
        return "init", None
    if name == "sft":
        return "sft", 0
    if name == "final":
        return "final", _final_step(fields)
    m = re.search(r"(\d+)$", name)
    return "rl", int(m.group(1)) if m else None


def trace_metrics(results: dict) -> dict:
    """One checkpoint's row of the trace from its results.json (see the module docstring for the keys)."""
    pc = (results.get("per_category") or {}).get("OVERALL") or {}
    controls = results.get("controls") or {}
    recon = (((controls.get("recon_permutation") or {}).get("metrics") or {}).get("fve_nrm") or {}).get("overall") or {}
    rp = (controls.get("recall_permutation") or {}).get("overall") or {}
    gap = None
    if _num(recon.get("gap_within")) is not None:
        ci = recon.get("gap_within_ci") or {}
        gap = {"mean": _num(recon["gap_within"]), "lo": _num(ci.get("lo")), "hi": _num(ci.get("hi"))}
    return {"fve_nrm": _est(pc.get("fve_nrm")), "gap": gap, "gap_p": _num(recon.get("p_within")),
            "recall": _est(pc.get("recall")), "floor": _est(rp.get("floor_within")),
            "recall_p": _num(rp.get("p_within")), "hit": _est(pc.get("hit")),
            "n_perm_recall": (controls.get("recall_permutation") or {}).get("n_perm"),
            "n_perm_recon": (controls.get("recon_permutation") or {}).get("n_perm")}


def trace_rows(sweep_dir: Union[str, Path]) -> list[dict]:
    """One row per finished cell of the checkpoint axis, in training order (init, sft, rl_step_N..., final):
    ``checkpoint``, ``stage``, ``step``, ``group`` (the other axes' values), ``cell`` and :func:`trace_metrics`."""
    from nlalab.rundir.load import load_run

    d = Path(sweep_dir)
    sw = read_resolved(d)
    if CHECKPOINT_AXIS not in sw.axes:
        raise UsageError(f"{d}: the sweep has no `checkpoint` axis. Fix: sweep a training folder with "
                         "`checkpoints: <nlalab train --out>` in the sweep file.")
    others = [a for a in sw.axes if a != CHECKPOINT_AXIS]
    rows = []
    for cell, run_dir in finished_cells(d):
        label = str(cell.values[CHECKPOINT_AXIS])
        stage, step = _stage_step(label, sw.checkpoints.get(label, {}))
        rows.append({"checkpoint": label, "stage": stage, "step": step, "cell": cell.name,
                     "group": ", ".join(f"{a}={cell.values.get(a)}" for a in others),
                     **trace_metrics(load_run(run_dir).results_dict())})
    order = {str(v): i for i, v in enumerate(sw.axes[CHECKPOINT_AXIS])}
    rows.sort(key=lambda r: (r["group"], STAGE_ORDER[r["stage"]], r["step"] if r["step"] is not None else -1,
                             order.get(r["checkpoint"], 0)))
    if not rows:
        raise UsageError(f"{d}: no finished cell yet. Fix: run (or finish) the sweep first.")
    return rows


# ------------------------------------------------------------------------------------------- figure


def _positions(rows: list[dict]) -> tuple[dict[str, float], float]:
    """x of each checkpoint: its training step; init left of SFT end (step 0) by a fraction of the span."""
    steps = [r["step"] for r in rows if r["step"] is not None]
    span = max(steps) if steps and max(steps) > 0 else 1
    x_init = -max(1.0, 0.12 * span)
    xs = {}
    for r in rows:
        if r["stage"] == "init":
            xs[r["checkpoint"]] = x_init
        elif r["step"] is not None:
            xs[r["checkpoint"]] = float(r["step"]) + (0.015 * span if r["stage"] == "final" else 0.0)
        else:  # final without a recorded step: one slot right of the last step
            xs[r["checkpoint"]] = float(span) * 1.08
    return xs, x_init


def trace_figure(rows: list[dict], out: Union[str, Path]) -> Path:
    """``out.png`` (200 dpi) and ``out.svg``: three panels against training step. Returns the PNG path."""
    from nlalab import plotting

    out = Path(out)
    pyplot = plotting.plt()
    fig, axs = pyplot.subplots(1, 3, figsize=(12.5, 3.6), squeeze=False)
    xs, x_init = _positions(rows)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    panels = [("fve_nrm", "fve_nrm (95 % CI)", plotting.PALETTE["fve_nrm"]),
              ("gap", "item-specific gap: fve_nrm − within-category floor\n(filled: p < 0.05)", plotting.PALETTE["real"]),
              ("recall", "keyword recall (95 % CI) and\nwithin-category permutation floor", plotting.PALETTE["recall"])]
    for ax, (key, title, color) in zip(axs[0], panels):
        for gi, (group, grs) in enumerate(groups.items()):
            for part, marker in (("line", "o"), ("final", "*")):
                sel = [r for r in grs if (r["stage"] == "final") == (part == "final") and r[key] is not None]
                if not sel:
                    continue
                x = [xs[r["checkpoint"]] for r in sel]
                m = [r[key]["mean"] for r in sel]
                yerr = [[max(0.0, v - r[key]["lo"]) if r[key]["lo"] is not None else 0.0 for v, r in zip(m, sel)],
                        [max(0.0, r[key]["hi"] - v) if r[key]["hi"] is not None else 0.0 for v, r in zip(m, sel)]]
                label = (group + ": " if group else "") + ("final (pair/)" if part == "final" else key)
                ax.errorbar(x, m, yerr=yerr, marker=marker, ms=9 if part == "final" else 5, capsize=3,
                            color=color, ls="-" if part == "line" else "none", label=label, alpha=1.0 - 0.25 * gi,
                            mfc="none" if key == "gap" else None)
                if part == "final":
                    for xi, mi in zip(x, m):
                        ax.annotate("final", (xi, mi), textcoords="offset points", xytext=(6, 4), fontsize=7)
                if key == "gap":
                    sig = [(xi, mi) for xi, mi, r in zip(x, m, sel) if r["gap_p"] is not None and r["gap_p"] < 0.05]
                    if sig:
                        ax.plot(*zip(*sig), ls="none", marker=marker, ms=9 if part == "final" else 5, color=color)
            if key == "recall":
                fl = [r for r in grs if r["floor"] is not None and r["stage"] != "final"]
                if fl:
                    fx = [xs[r["checkpoint"]] for r in fl]
                    ax.plot(fx, [r["floor"]["mean"] for r in fl], ls="--", color=plotting.PALETTE["within"],
                            label=(group + ": " if group else "") + "within-category floor")
                    if all(r["floor"]["lo"] is not None and r["floor"]["hi"] is not None for r in fl):
                        ax.fill_between(fx, [r["floor"]["lo"] for r in fl], [r["floor"]["hi"] for r in fl],
                                        color=plotting.PALETTE["within"], alpha=0.15, lw=0)
        if key in ("fve_nrm", "gap"):
            ax.axhline(0, color="#888", lw=0.8)
        ax.axvline(0, color="#bbb", lw=0.8, ls=":")
        ax.set_title(title)
        ticks = sorted({x for c, x in xs.items() if not any(r["checkpoint"] == c and r["stage"] == "final"
                                                             for r in rows)})
        labels = []
        for t in ticks:
            if t == x_init:
                labels.append("init")
            elif t == 0:
                labels.append("SFT\nend")
            else:
                labels.append(f"{t:g}")
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, fontsize=7, rotation=0 if len(ticks) <= 10 else 45)
        ax.set_xlabel("training step (RL steps after SFT end)")
        ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    return plotting.save(fig, out.parent, out.name)


# -------------------------------------------------------------------------------------------- table


def _ci(e: Optional[dict], signed: bool = False) -> str:
    from nlalab.format import fmt_num

    if e is None:
        return "n/a"
    s = fmt_num(e["mean"], signed=signed)
    if e.get("lo") is not None and e.get("hi") is not None:
        s += f" [{fmt_num(e['lo'], signed=signed)}, {fmt_num(e['hi'], signed=signed)}]"
    return s


def trace_table(rows: list[dict]) -> str:
    """The trace as a Markdown table (n/a where a cell lacks a figure)."""
    from nlalab.format import fmt_num, fmt_p, md_cell

    multi = len({r["group"] for r in rows}) > 1
    head = (["group"] if multi else []) + ["checkpoint", "step", "fve_nrm [95% CI]",
                                           "item-specific gap [95% CI]", "gap p", "keyword recall [95% CI]",
                                           "within-category floor", "recall p", "hit rate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        step = "before training" if r["stage"] == "init" else ("n/a" if r["step"] is None else str(r["step"]))
        if r["stage"] == "sft":
            step = "0 (SFT end)"
        elif r["stage"] == "final" and r["step"] is not None:
            step = f"{r['step']} (final)"
        cells = ([r["group"]] if multi else []) + [
            r["checkpoint"], step, _ci(r["fve_nrm"], signed=True), _ci(r["gap"], signed=True),
            fmt_p(r["gap_p"], r["n_perm_recon"]), _ci(r["recall"]),
            fmt_num(r["floor"]["mean"]) if r["floor"] else "n/a", fmt_p(r["recall_p"], r["n_perm_recall"]),
            fmt_num(r["hit"]["mean"]) if r["hit"] else "n/a"]
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def trace_markdown(rows: list[dict], figure: Optional[Path] = None, md_path: Optional[Path] = None,
                   source: Optional[str] = None) -> str:
    """A Markdown page: what was measured, the figure (relative link) and the table."""
    out = ["# Training trace", ""]
    if source:
        out += [f"Sweep: `{source}`.", ""]
    out += ["Each row is one checkpoint of one `nlalab train` run, evaluated by a full `nlalab run` on the study "
            "corpus (a cell of a checkpoint sweep). fve_nrm with its 95 % cluster-bootstrap interval; the "
            "item-specific gap is fve_nrm minus the within-category permutation floor (`recon_permutation`), "
            "with its interval and p; keyword recall against its within-category permutation floor "
            "(`recall_permutation`) and that p; hit rate is the share of items whose explanation shares at least "
            "one content word with the prompt. n/a: the cell did not compute that figure.", ""]
    if figure is not None:
        rel = figure
        if md_path is not None:
            try:
                import os

                rel = Path(os.path.relpath(figure, Path(md_path).parent))
            except ValueError:
                rel = figure
        out += [f"![training trace]({rel.as_posix()})", ""]
    out.append(trace_table(rows))
    return "\n".join(out)


def write_training_trace(sweep_dir: Union[str, Path], out: Union[str, Path],
                         md: Optional[Union[str, Path]] = None) -> dict[str, Path]:
    """Figure ``out.png``/``out.svg`` and (with ``md``) the Markdown page; returns the paths written."""
    rows = trace_rows(sweep_dir)
    png = trace_figure(rows, out)
    paths = {"png": png, "svg": png.with_suffix(".svg")}
    if md is not None:
        md = Path(md)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(trace_markdown(rows, png, md, source=str(sweep_dir)), encoding="utf-8")
        paths["md"] = md
    return paths


__all__ = ["trace_rows", "trace_metrics", "trace_figure", "trace_table", "trace_markdown", "write_training_trace"]
