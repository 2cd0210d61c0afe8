"""Matplotlib figures of one run's core sections (and of a comparison), saved as ``plots/<name>.png`` (200 dpi)
and ``.svg``. The controls draw their own figures (``Control.figures``); :func:`run_plots` collects both.

Every function takes plain dicts (results.json, sample rows, the output of
:func:`nlalab.report.compare.compare_runs`) and returns the PNG path, or None when the run lacks the data.
Error bars are the 95% intervals stored with each mean (cluster bootstrap over items) or the permutation
interval of a floor. fve_nrm and fve_nrm_seed have different denominators and never share an axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from nlalab.format import OVERALL
from nlalab.plotting import PALETTE, bars as _bars, err as _err, legend_below as _legend_below, min_span as _min_span
from nlalab.plotting import plt as _plt, save as _save

__all__ = ["category_bars", "stability", "scorer_bars", "power_bars", "flag_rates", "trajectories", "run_plots"]


def category_bars(results: dict, plots_dir: Path) -> Optional[Path]:
    """fve_nrm, fve_nrm_seed (each on its own axis) and keyword recall per category, with 95% CIs."""
    cats = list(results.get("categories") or []) + [OVERALL]
    pc = results.get("per_category") or {}
    plt = _plt()
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.6))
    _bars(a1, cats, [("fve_nrm (÷ B_rv)", [(pc.get(c) or {}).get("fve_nrm") for c in cats], PALETTE["fve_nrm"])],
          "fve_nrm (÷ B_rv)")
    a1.set_title("fve_nrm, training-repo definition (95% CI)")
    _bars(a2, cats, [("fve_nrm_seed (÷ var(gold))", [(pc.get(c) or {}).get("fve_nrm_seed") for c in cats],
                      PALETTE["fve_nrm_seed"])], "fve_nrm_seed (÷ var(gold))")
    a2.set_title("fve_nrm_seed, the seed's definition (95% CI)")
    _bars(a3, cats, [("recall (mean)", [(pc.get(c) or {}).get("recall") for c in cats], PALETTE["recall"]),
                     ("recall (≥1 hit)", [(pc.get(c) or {}).get("hit") for c in cats], PALETTE["hit"])],
          "keyword recall")
    a3.set_title("Content: keyword recall (95% CI)")
    a3.set_ylim(0, max(1.0, a3.get_ylim()[1]))
    for ax in (a1, a2, a3):
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"Reconstruction vs content by category (N={results.get('n_samples')}, {results.get('n_items')} items)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, plots_dir, "category_fve_recall")


def power_bars(results: dict, plots_dir: Path) -> Optional[Path]:
    """Observed category spread against the minimum detectable difference, per metric."""
    pw = (results.get("power") or {}).get("metrics") or {}
    keys = [m for m, e in pw.items() if e.get("mdd") is not None]
    if not keys:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(len(keys))
    ax.bar(x - 0.2, [pw[m].get("observed_spread") or 0 for m in keys], 0.4, color=PALETTE["fve_nrm"],
           label="observed spread (max − min)")
    ax.bar(x + 0.2, [pw[m]["mdd"] for m in keys], 0.4, color="#bbb", label="minimum detectable difference")
    ax.set_xticks(x)
    ax.set_xticklabels(keys)
    _legend_below(ax, ncol=2)
    ax.set_title(f"Power at {results.get('power', {}).get('n_per_group')} items per category")
    fig.tight_layout()
    return _save(fig, plots_dir, "power")


def flag_rates(results: dict, plots_dir: Path) -> Optional[Path]:
    """Failure-flag rates of the explanations and of every control that generated text."""
    from nlalab.study.sections import FLAG_NAMES, flag_blocks

    blocks = [(n, b) for n, b in flag_blocks(results) if b.get("n")]
    if not blocks:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(FLAG_NAMES))
    w = 0.8 / len(blocks)
    for k, (name, b) in enumerate(blocks):
        rates = b.get("rates") or {}
        ax.bar(x + (k - (len(blocks) - 1) / 2) * w, [rates.get(f) or 0.0 for f in FLAG_NAMES], w,
               label=f"{name} (n={b.get('n')})")
    ax.set_xticks(x)
    ax.set_xticklabels(FLAG_NAMES)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of rows")
    _legend_below(ax, ncol=3, fontsize=7)
    ax.set_title("Failure flags")
    fig.tight_layout()
    return _save(fig, plots_dir, "flags")


def stability(results: dict, samples: list[dict], plots_dir: Path) -> Optional[Path]:
    """Within-prompt vs cross-prompt std (seed §3.4) and each item's K fve_nrm samples."""
    st = results.get("stability") or {}
    cats = list(results.get("categories") or [])
    if not st:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1, 1.3]})
    labels = cats + [OVERALL]
    x = np.arange(len(labels))
    w = 0.13
    k = 0
    for m, color in (("cos", "#7f7f7f"), ("fve_nrm", PALETTE["fve_nrm"]), ("recall", PALETTE["recall"])):
        for kind, alpha in (("within", 1.0), ("cross", 0.45)):
            vals = [((st.get(c) or {}).get(m) or {}).get(kind) for c in labels]
            a1.bar(x + (k - 2.5) * w, [np.nan if v is None else v for v in vals], w, color=color, alpha=alpha,
                   label=f"{m} {kind}")
            k += 1
    a1.set_xticks(x)
    a1.set_xticklabels(labels)
    a1.set_ylabel("std")
    _legend_below(a1, ncol=3, fontsize=7)
    a1.set_title("Within-prompt (solid) vs cross-prompt (pale) std")
    items: dict[str, list[float]] = {}
    item_cat: dict[str, str] = {}
    for r in samples:
        if r.get("fve_nrm") is not None:
            items.setdefault(str(r["item_id"]), []).append(float(r["fve_nrm"]))
            item_cat[str(r["item_id"])] = r["category"]
    order = sorted(items, key=lambda i: (cats.index(item_cat[i]) if item_cat[i] in cats else 99, i))
    colors = plt.get_cmap("tab10")
    for xi, iid in enumerate(order):
        v = items[iid]
        c = colors(cats.index(item_cat[iid]) % 10) if item_cat[iid] in cats else "#333"
        a2.plot([xi] * len(v), v, "o", ms=3, color=c, alpha=0.8)
        a2.plot([xi - 0.3, xi + 0.3], [np.mean(v)] * 2, "-", color=c, linewidth=1.2)
    for ci, c in enumerate(cats):
        a2.plot([], [], "o", color=colors(ci % 10), label=c)
    a2.set_xticks([])
    a2.set_xlabel(f"items ({len(order)}), grouped by category")
    _legend_below(a2, ncol=len(cats), fontsize=7)
    a2.set_ylabel("fve_nrm")
    a2.set_title("fve_nrm of each item's K samples (dash: item mean)")
    fig.tight_layout()
    return _save(fig, plots_dir, "stability")


def scorer_bars(results: dict, plots_dir: Path) -> Optional[Path]:
    """Per-category means of every added scorer metric with 95% CIs, floors and chance as horizontal lines."""
    secs = results.get("scorers") or {}
    panels = [(name, m, sec) for name, sec in sorted(secs.items()) for m in sec.get("metrics") or []]
    if not panels:
        return None
    cats = list(results.get("categories") or []) + [OVERALL]
    plt = _plt()
    ncol = min(3, len(panels))
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, (name, m, sec) in zip(axes.ravel(), panels):
        ests = [((sec.get("per_category") or {}).get(c) or {}).get(m) for c in cats]
        _bars(ax, cats, [(m, ests, "#4c72b0")], m)
        o = (((sec.get("permutation") or {}).get("metrics") or {}).get(m) or {}).get("overall")
        for key, style, lab in (("floor_within", ("--", 1.0, "within"), "floor within"),
                                ("floor_cross", (":", 1.2, "cross"), "floor cross")):
            v = ((o or {}).get(key) or {}).get("mean")
            if v is not None:
                ax.axhline(v, color=PALETTE[style[2]], linestyle=style[0], linewidth=style[1], label=lab)
        ch = (sec.get("chance") or {}).get(m)
        if ch is not None:
            ax.axhline(ch, color="#999", linestyle="-.", linewidth=1, label=f"chance {ch:.3f}")
        _legend_below(ax, ncol=2, fontsize=7)
        ax.set_title(f"{name}: {m}")
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, plots_dir, "scorers")


def trajectories(cmp: dict, plots_dir: Path) -> Optional[Path]:
    """One panel per key row of a comparison: value per run with its 95% interval, and the pattern."""
    names = cmp.get("names") or []
    if len(names) < 2:
        return None
    keys = ["fve_nrm", "fve_nrm_seed", "cos", "recall", "spread.fve_nrm", "spread.recall", "perm.gap_cross",
            "perm.gap_within", "random.fve_nrm", "random.cos", "directions.alignment"]
    by_key = {r["key"]: r for r in cmp["rows"]}
    panels = [by_key[k] for k in keys if k in by_key]
    cat_rows = [r for r in cmp["rows"] if r["key"].startswith("recall.")]
    n_panels = len(panels) + (1 if cat_rows else 0)
    plt = _plt()
    ncol = 4
    nrow = (n_panels + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.7 * nrow), squeeze=False)
    x = np.arange(len(names))
    flat = list(axes.ravel())
    tol = float((cmp.get("settings") or {}).get("tol", 0.02))
    for ax, row in zip(flat, panels):
        vals = [_err(c) for c in row["values"]]
        ax.errorbar(x, [v[0] for v in vals], yerr=np.array([[v[1] for v in vals], [v[2] for v in vals]]),
                    marker="o", capsize=3, color="#1f77b4")
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=7, rotation=15)
        ax.set_title(row["label"], fontsize=8)
        ax.set_xlabel(row["pattern"]["text"][:48], fontsize=7, color="#b22222")
        _min_span(ax, [v[0] - v[1] for v in vals] + [v[0] + v[2] for v in vals], tol)
    if cat_rows:
        ax = flat[len(panels)]
        for row in cat_rows:
            vals = [_err(c) for c in row["values"]]
            ax.errorbar(x, [v[0] for v in vals], yerr=np.array([[v[1] for v in vals], [v[2] for v in vals]]),
                        marker="o", capsize=2, label=row["label"].replace(" recall", ""))
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=7, rotation=15)
        ax.set_title("per-category recall (95% CI)", fontsize=8)
        _min_span(ax, [_err(c)[0] for r in cat_rows for c in r["values"]], tol)
        _legend_below(ax, ncol=4, fontsize=6)
    for ax in flat[n_panels:]:
        ax.axis("off")
    fig.suptitle("Trajectories across runs (95% intervals; gaps without intervals: see p in the table)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, plots_dir, "trajectories")


def run_plots(results: dict, samples: list[dict], plots_dir: Path, cmp: Optional[dict] = None,
              run=None) -> dict[str, "object"]:
    """Every figure of one run: core ones, each control's own (registry order), the comparison's; name ->
    :class:`nlalab.study.controls.Figure`."""
    from nlalab.study.controls import Figure, registry

    out: dict = {}
    core = (("category_fve_recall", lambda: category_bars(results, plots_dir), "fve and keyword recall by category",
             "fve_nrm (÷ B_rv), fve_nrm_seed (÷ the gold vector's own variance) and keyword recall per category, each "
             "on its own axis; error bars: 95% cluster-bootstrap intervals over items."),
            ("stability", lambda: stability(results, samples, plots_dir), "Within- vs cross-prompt standard deviations",
             "Left: within-prompt vs cross-prompt std; right: each item's K fve_nrm samples."),
            ("power", lambda: power_bars(results, plots_dir), "Observed spread vs minimum detectable difference",
             "Per metric: the observed spread between categories beside the smallest difference this n detects "
             "with 80% power."),
            ("flags", lambda: flag_rates(results, plots_dir), "Failure-flag rates", "Share of rows with each flag."),
            ("scorers", lambda: scorer_bars(results, plots_dir), "Per-category means of the content scorers",
             "Per-category means (95% CI) with permutation floors and chance levels."),
            ("trajectories", lambda: trajectories(cmp, plots_dir) if cmp else None, "Trajectory plots across runs",
             "Each key metric across the compared runs, with 95% intervals and the computed pattern."))
    for name, fn, alt, caption in core:
        p = fn()
        if p is not None:
            out[name] = Figure(p, alt, caption)
    for cname, c in registry().items():
        sec = (results.get("controls") or {}).get(cname)
        if sec:
            for f in c.figures(sec, results, plots_dir, run):
                out[f"{cname}:{f.path.stem}"] = f
    return out
