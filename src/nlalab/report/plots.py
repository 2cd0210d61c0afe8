"""Matplotlib figures of one run (and of a comparison), saved as ``plots/<name>.png`` and ``.svg``.

Every function takes plain dicts (results.json, sample rows, the output of
:func:`nlalab.report.compare.compare_runs`) and returns the PNG path, or None when the run lacks the data
(e.g. no random-Gaussian control). The Agg backend is used, so no display is needed. Error bars are the
95% intervals stored with each mean (cluster bootstrap over items) or the permutation interval of a floor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

__all__ = [
    "category_bars",
    "permutation_floors",
    "real_vs_random",
    "direction_heatmap",
    "stability",
    "scorer_bars",
    "trajectories",
    "run_plots",
    "PALETTE",
]

OVERALL = "OVERALL"
PALETTE = {"fve_nrm": "#1f77b4", "fve_nrm_seed": "#9ecae1", "recall": "#d62728", "hit": "#fc9272",
           "real": "#2b2b2b", "within": "#ff7f0e", "cross": "#2ca02c", "random": "#9467bd"}
DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
                         "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "nlalab"})
    return plt


def _save(fig, plots_dir: Path, name: str) -> Path:
    plt = _plt()
    plots_dir.mkdir(parents=True, exist_ok=True)
    png = plots_dir / f"{name}.png"
    fig.savefig(png, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(plots_dir / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return png


def _err(e: Optional[dict]) -> tuple[float, float, float]:
    """(mean, minus, plus) for an errorbar; zeros when missing."""
    if not e or e.get("mean") is None:
        return np.nan, 0.0, 0.0
    m = float(e["mean"])
    lo = float(e["lo"]) if e.get("lo") is not None else m
    hi = float(e["hi"]) if e.get("hi") is not None else m
    return m, max(0.0, m - lo), max(0.0, hi - m)


def _bars(ax, labels, series: list[tuple[str, list[Optional[dict]], str]], ylabel: str, zero_line=True):
    x = np.arange(len(labels))
    w = 0.8 / max(1, len(series))
    for k, (name, ests, color) in enumerate(series):
        vals = [_err(e) for e in ests]
        m = [v[0] for v in vals]
        yerr = np.array([[v[1] for v in vals], [v[2] for v in vals]])
        ax.bar(x + (k - (len(series) - 1) / 2) * w, m, w, yerr=yerr, capsize=3, color=color, label=name,
               edgecolor="white", linewidth=0.5, error_kw={"elinewidth": 1, "ecolor": "#333"})
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=0)
    ax.set_ylabel(ylabel)
    if zero_line:
        ax.axhline(0, color="#888", linewidth=0.6)
    _legend_below(ax, ncol=len(series))


def _legend_below(ax, ncol: int = 2, fontsize: int = 8) -> None:
    """Legend under the axes, so it never hides a bar or a line."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, frameon=False, fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, -0.11),
                  ncol=max(1, min(ncol, len(handles))))


def category_bars(results: dict, plots_dir: Path) -> Optional[Path]:
    """fve_nrm (both denominators) next to keyword recall (mean and ≥1 hit), per category, with 95% CIs."""
    cats = list(results.get("categories") or []) + [OVERALL]
    pc = results.get("per_category") or {}
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    _bars(a1, cats, [("fve_nrm (÷ B_rv)", [(pc.get(c) or {}).get("fve_nrm") for c in cats], PALETTE["fve_nrm"]),
                     ("fve_nrm_seed (÷ var(gold))", [(pc.get(c) or {}).get("fve_nrm_seed") for c in cats],
                      PALETTE["fve_nrm_seed"])], "fve")
    a1.set_title("Reconstruction by category (95% CI)")
    _bars(a2, cats, [("recall (mean)", [(pc.get(c) or {}).get("recall") for c in cats], PALETTE["recall"]),
                     ("recall (≥1 hit)", [(pc.get(c) or {}).get("hit") for c in cats], PALETTE["hit"])],
          "keyword recall")
    a2.set_title("Content (keyword recall) by category (95% CI)")
    a2.set_ylim(0, max(1.0, a2.get_ylim()[1]))
    fig.suptitle(f"fve vs recall by category (N={results.get('n_samples')}, {results.get('n_items')} items)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, plots_dir, "category_fve_recall")


def permutation_floors(results: dict, plots_dir: Path) -> Optional[Path]:
    """Real recall against the within- and cross-category permutation floors, per category and overall."""
    pm = results.get("permutation") or {}
    if not pm.get("overall"):
        return None
    cats = list(results.get("categories") or [])
    blocks = [(c, (pm.get("per_category") or {}).get(c)) for c in cats] + [(OVERALL, pm["overall"])]
    labels = [c for c, _ in blocks]
    pc = results.get("per_category") or {}

    def real_est(c: str, b: Optional[dict]) -> Optional[dict]:
        if not b:
            return None
        e = (pc.get(c) or {}).get("recall")  # same rows, with its cluster-bootstrap interval
        return e if e and abs(float(e["mean"]) - b["real"]) < 1e-9 else {"mean": b["real"]}

    real = [real_est(c, b) for c, b in blocks]
    within = [b["floor_within"] if b else None for _, b in blocks]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    series = [("real (95% CI)", real, PALETTE["real"]), ("permuted within-category", within, PALETTE["within"])]
    # The cross-category floor is defined for the whole set; per category it is the block's own cross floor.
    series.append(("permuted cross-category", [b["floor_cross"] if b else None for _, b in blocks], PALETTE["cross"]))
    _bars(ax, labels, series, "keyword recall")
    ax.set_ylim(0, max(0.05, ax.get_ylim()[1] * 1.3))
    for i, (_, b) in enumerate(blocks):
        if b:
            top = max([b["real"], 0.0] + [float(e["hi"]) for e in (real[i], within[i], b["floor_cross"])
                                          if e and e.get("hi") is not None])
            ax.annotate(f"Δw {b['gap_within']:+.3f}\np {b['p_within']:.3f}", (i, top),
                        textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7, color="#555")
    ax.set_title(f"Recall vs permutation floors ({pm.get('n_perm')} permutations; bars: 2.5–97.5% of the null)")
    fig.tight_layout()
    return _save(fig, plots_dir, "permutation_floors")


def real_vs_random(samples: list[dict], random_rows: Optional[list[dict]], plots_dir: Path) -> Optional[Path]:
    """Histograms of cos and fve_nrm: real activations vs L2-matched random-Gaussian vectors."""
    if not random_rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, m in zip(axes, ("cos", "fve_nrm")):
        real = np.array([r[m] for r in samples if r.get(m) is not None], dtype=float)
        rnd = np.array([r[m] for r in random_rows if r.get(m) is not None], dtype=float)
        both = np.concatenate([real, rnd]) if real.size + rnd.size else np.zeros(1)
        lo, hi = float(np.min(both)), float(np.max(both))
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 25)
        ax.hist(real, bins=bins, alpha=0.65, color=PALETTE["fve_nrm"], label=f"real (n={real.size})", density=True)
        ax.hist(rnd, bins=bins, alpha=0.65, color=PALETTE["random"], label=f"random Gaussian (n={rnd.size})",
                density=True)
        for arr, c in ((real, PALETTE["fve_nrm"]), (rnd, PALETTE["random"])):
            if arr.size:
                ax.axvline(arr.mean(), color=c, linestyle="--", linewidth=1)
        ax.set_ylabel("density")
        _legend_below(ax, ncol=2)
        ax.set_title(f"{m}: real vs random Gaussian (dashed: means)")
    fig.tight_layout()
    return _save(fig, plots_dir, "real_vs_random")


def direction_heatmap(results: dict, plots_dir: Path) -> Optional[Path]:
    """Direction x lexicon-category mean keyword hits (seed §4.3), intended category outlined."""
    d = results.get("directions")
    if not d or not d.get("rows"):
        return None
    lc = list(d.get("lexicon_categories") or [])
    rows = d["rows"]
    M = np.array([[e["mean_hits"].get(c, 0.0) for c in lc] for e in rows], dtype=float)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(lc), 0.9 + 0.38 * len(rows)))
    im = ax.imshow(M, cmap="Blues", aspect="auto", vmin=0, vmax=max(1.0, float(M.max()) if M.size else 1.0))
    ax.set_xticks(range(len(lc)))
    ax.set_xticklabels(lc)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{e['direction']} {'✓' if e['ok'] else '✗'}" for e in rows], fontsize=8)
    for i, e in enumerate(rows):
        for j in range(len(lc)):
            ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if M[i, j] > 0.6 * max(1.0, M.max()) else "#222")
        if e["category"] in lc and e["kind"] != "neg":
            j = lc.index(e["category"])
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=1.5))
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="mean hits / explanation")
    ax.set_title(f"Direction × category keyword hits (alignment {d['alignment']['text']}, "
                 f"negation {d['negation_symmetry']['text']})")
    fig.tight_layout()
    return _save(fig, plots_dir, "direction_heatmap")


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
        if o:
            ax.axhline(o["floor_within"]["mean"], color=PALETTE["within"], linestyle="--", linewidth=1,
                       label="floor within")
            ax.axhline(o["floor_cross"]["mean"], color=PALETTE["cross"], linestyle=":", linewidth=1.2,
                       label="floor cross")
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


def _min_span(ax, ys: list[float], tol: float) -> None:
    """Show at least ± tol around the data, so that a change the pattern rules call flat also looks flat."""
    ys = [y for y in ys if y is not None and np.isfinite(y)]
    if not ys:
        return
    lo, hi = min(ys), max(ys)
    if hi - lo < 2 * tol:
        mid = (hi + lo) / 2
        ax.set_ylim(mid - 1.25 * tol, mid + 1.25 * tol)


def run_plots(results: dict, samples: list[dict], random_rows: Optional[list[dict]], plots_dir: Path,
              cmp: Optional[dict] = None) -> dict[str, Path]:
    """Every plot of one run (plus the trajectories of ``cmp``): name -> PNG path."""
    out = {}
    for name, fn in (("category_fve_recall", lambda: category_bars(results, plots_dir)),
                     ("permutation_floors", lambda: permutation_floors(results, plots_dir)),
                     ("real_vs_random", lambda: real_vs_random(samples, random_rows, plots_dir)),
                     ("direction_heatmap", lambda: direction_heatmap(results, plots_dir)),
                     ("stability", lambda: stability(results, samples, plots_dir)),
                     ("scorers", lambda: scorer_bars(results, plots_dir)),
                     ("trajectories", lambda: trajectories(cmp, plots_dir) if cmp else None)):
        p = fn()
        if p is not None:
            out[name] = p
    return out
