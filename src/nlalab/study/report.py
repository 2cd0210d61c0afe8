"""Markdown report (report.md) and a terminal summary for the results of :func:`nlalab.study.analysis.analyze`.

Tables follow the shapes of the seed paper (sections 3 and 4); every mean is printed with its 95%
interval as ``0.880 [0.861, 0.897]``. Sections for controls that were not run say "not run".
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["render_report", "print_summary", "fmt_est", "fmt_num"]

OVERALL = "OVERALL"
NOT_RUN = "not run"


# ----------------------------------------------------------------------------- formatting


def fmt_num(x: Optional[float], digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_est(e: Optional[dict], digits: int = 3) -> str:
    """``mean [lo, hi]`` for an Estimate dict; ``n/a`` when missing."""
    if not e or e.get("mean") is None:
        return "n/a"
    lo, hi = e.get("lo"), e.get("hi")
    if lo is None or hi is None:
        return fmt_num(e["mean"], digits)
    return f"{e['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_p(p: Optional[float]) -> str:
    if p is None:
        return "n/a"
    return f"{p:.4f}" if p >= 0.0001 else f"{p:.1e}"


def _cell(s: Any) -> str:
    """Table-safe cell text: pipes escaped, newlines flattened."""
    return str(s).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _quote(text: Any) -> list[str]:
    lines = str(text if text is not None else "").splitlines() or [""]
    return ["> " + ln if ln else ">" for ln in lines]


def _meta_get(meta: dict, *keys: str, default: Any = "?") -> Any:
    for k in keys:
        if meta.get(k) not in (None, ""):
            return meta[k]
    return default


# ----------------------------------------------------------------------------- sections


def _header(results: dict, meta: dict) -> list[str]:
    cfg = meta.get("config") or {}
    settings = results.get("settings") or {}
    pair = _meta_get(meta, "pair", "pair_name", "name")
    seed = cfg.get("seed", settings.get("seed", "?"))
    lines = [
        f"# NLA evaluation report: {pair}",
        "",
        f"- **Pair:** {pair}",
        f"- **Layer:** {_meta_get(meta, 'layer')}",
        f"- **Corpus:** {_meta_get(meta, 'corpus', 'corpus_name')}",
        f"- **N (explanations):** {results.get('n_samples')} ({results.get('n_items')} items)",
        f"- **K (samples per item):** {results.get('k')}",
        f"- **Seed:** {seed}",
        f"- **B_rv:** {fmt_num(results.get('b_rv'), 6)} (source: {results.get('b_rv_source')})",
        f"- **Uncertainty:** 95% percentile intervals; per-category means use the cluster bootstrap over "
        f"items ({settings.get('n_boot', '?')} resamples); permutation floors use "
        f"{settings.get('n_perm', '?')} permutations.",
    ]
    for w in results.get("warnings") or []:
        lines.append(f"- **Warning:** {w}")
    return lines + [""]


def _per_category(results: dict) -> list[str]:
    cats = list(results.get("categories") or [])
    pc = results.get("per_category") or {}
    sp = results.get("spread") or {}
    cols = ["cos", "fve_nrm", "fve_nrm_seed", "recall", "hit"]
    header = ["Category", "N", "cos", "fve_nrm", "fve_nrm_seed", "recall (mean)", "recall (≥1 hit)"]
    rows = []
    for c in cats + [OVERALL]:
        e = pc.get(c) or {}
        rows.append([c, e.get("n", 0)] + [fmt_est(e.get(m)) for m in cols])
    rows.append(["Spread", ""] + [fmt_num(sp.get(m)) for m in cols])
    lines = ["## 1. Per-category reconstruction and recall (seed §3.1)", ""] + _table(header, rows)
    lines += [
        "",
        "Denominators: `fve_nrm = 1 - mse_nrm / B_rv` with B_rv = "
        f"{fmt_num(results.get('b_rv'), 6)} from {results.get('b_rv_source')} (training-repo definition); "
        "`fve_nrm_seed = 1 - mse_nrm / var_d(n(gold))` uses the per-vector variance of the single "
        "normalised gold vector (seed §2.3) and is not comparable with fve_nrm. Spread = max - min over "
        "categories. Recall and hit leave out prompts without content words.",
        "",
        "Other per-category rates:",
        "",
    ]
    other = ["mse_nrm", "length_words", "truncated", "missing_close_tag", "empty", "cjk_smell"]
    header2 = ["Category", "mse_nrm", "words", "truncated", "missing close tag", "empty", "cjk_smell"]
    rows2 = [[c] + [fmt_est(((pc.get(c) or {}).get(m)), 1 if m == "length_words" else 3) for m in other]
             for c in cats + [OVERALL]]
    rows2.append(["Spread"] + [fmt_num(sp.get(m), 1 if m == "length_words" else 3) for m in other])
    return lines + _table(header2, rows2) + [""]


def _stability(results: dict) -> list[str]:
    st = results.get("stability") or {}
    cats = list(results.get("categories") or [])
    header = ["Category", "cos within", "cos cross", "fve_nrm within", "fve_nrm cross", "recall within",
              "recall cross"]
    rows = []
    for c in cats + [OVERALL]:
        e = st.get(c) or {}
        r = [c]
        for m in ("cos", "fve_nrm", "recall"):
            r += [fmt_num((e.get(m) or {}).get("within")), fmt_num((e.get(m) or {}).get("cross"))]
        rows.append(r)
    return (
        ["## 2. Within-prompt stability (seed §3.4)", "",
         "within = mean over items of the std over the item's K samples (ddof=0); cross = std over items "
         "of the item means (ddof=1).", ""]
        + _table(header, rows)
        + [""]
    )


def _permutation(results: dict) -> list[str]:
    pm = results.get("permutation")
    lines = ["## 3. Permutation control (seed §4.1)", ""]
    if not pm or not pm.get("overall"):
        return lines + [f"Permutation control: {NOT_RUN} (no prompt has content words).", ""]
    o = pm["overall"]
    lines += [
        f"Unit shuffled: {pm.get('unit')}; {pm.get('n_perm')} permutations; floors are the mean of the "
        "permutation distribution [2.5%, 97.5%]; p = permutation p-value, alternative 'greater'.",
        "",
    ]
    lines += _table(
        ["Pairing", "Recall", "p"],
        [
            ["Real", fmt_num(o["real"]), ""],
            ["Permuted within-category", fmt_est(o["floor_within"]), ""],
            ["Permuted cross-category", fmt_est(o["floor_cross"]), ""],
            ["Real − perm-cross", fmt_num(o["gap_cross"], signed=True), fmt_p(o["p_cross"])],
            ["Real − perm-within", fmt_num(o["gap_within"], signed=True), fmt_p(o["p_within"])],
        ],
    )
    rows = []
    for c in results.get("categories") or []:
        e = (pm.get("per_category") or {}).get(c)
        if not e:
            rows.append([c, "n/a", "n/a", "n/a", "n/a"])
            continue
        rows.append([c, fmt_num(e["real"]), fmt_est(e["floor_within"]), fmt_num(e["gap_within"], signed=True),
                     fmt_p(e["p_within"])])
    lines += ["", "Per category, gap above the within-category floor:", ""]
    lines += _table(["Category", "Real recall", "Permuted-within", "Δ", "p"], rows)
    return lines + [""]


def _random(results: dict) -> list[str]:
    rg = results.get("random_gaussian")
    lines = ["## 4. Random-Gaussian control (seed §4.2)", ""]
    if not rg:
        return lines + [f"Random-Gaussian control: {NOT_RUN}.", ""]
    lines += [f"{rg.get('n')} explanations of {rg.get('n_vectors')} random vectors; CIs: {rg.get('ci_method')}.",
              ""]
    rows = []
    for c in rg.get("comparison") or []:
        label = "recall vs random real prompt" if c["metric"] == "recall" else c["metric"]
        rows.append([label, fmt_est(c.get("real")), fmt_est(c.get("random"))])
    lines += _table(["Metric", "Real", "Random"], rows)
    ft = rg.get("format_templates") or {}
    for n_words in (3, 5):
        key = f"first{n_words}"
        lines += ["", f"Top opening phrases (first {n_words} words):", ""]
        trows = []
        for side in ("real", "random"):
            block = (ft.get(side) or {}).get(key) or {}
            for t in block.get("top") or []:
                trows.append([side, f"\"{t['phrase']}\"", f"{t['count']}/{block.get('n')}", fmt_num(t["share"])])
        lines += _table(["Inputs", "Phrase", "Count", "Share"], trows) if trows else ["(no explanations)"]
    shares = []
    for side in ("real", "random"):
        b = (ft.get(side) or {}).get("first3") or {}
        shares.append(f"{side}: top 3-word phrase share {fmt_num(b.get('top_share'))}, "
                      f"{b.get('distinct', 0)} distinct openings")
    return lines + ["", "; ".join(shares) + ".", ""]


def direction_verdict(e: dict) -> str:
    """The top category of a direction and whether it is the expected one (away from c for a negation)."""
    top = e.get("top") or "none"
    if e["kind"] == "neg":
        return f"{top} (away from {e['category']}) ✓" if e["ok"] else f"{top} ✗ (not away from {e['category']})"
    return f"{top} ✓" if e["ok"] else f"{top} ✗ (should be {e['category']})"


def _directions(results: dict) -> list[str]:
    d = results.get("directions")
    lines = ["## 5. Direction-injection control (seed §4.3)", ""]
    if not d:
        return lines + [f"Direction-injection control: {NOT_RUN}.", ""]
    lc = list(d.get("lexicon_categories") or [])
    rows = []
    for e in d.get("rows") or []:
        rows.append([e["direction"]] + [fmt_num(e["mean_hits"].get(c), 2) for c in lc] + [direction_verdict(e)])
    lines += [f"Mean lexicon hits per explanation (K samples per direction). Rule: {d.get('rule')}.", ""]
    lines += _table(["Direction"] + lc + ["top"], rows)
    lines += [
        "",
        f"- Direction → category alignment (self): **{d['alignment']['text']}**",
        f"- Negation symmetry (neg, top away from c): **{d['negation_symmetry']['text']}**",
        f"- Cross-axis: **{d['cross']['text']}**",
        "",
    ]
    return lines


def _confab(results: dict) -> list[str]:
    cf = results.get("confabulation") or {}
    lines = ["## 6. Confabulation examples (seed §3.5)", ""]
    thr = cf.get("fve_threshold")
    lines += [
        f"Rows with fve_nrm ≥ {fmt_num(thr)} (the {cf.get('quantile')} quantile) and recall ≤ "
        f"{cf.get('max_recall')}, highest fve_nrm first; {cf.get('n_candidates', 0)} rows qualify. Verbatim:",
        "",
    ]
    any_ex = False
    for c, exs in (cf.get("per_category") or {}).items():
        for ex in exs:
            any_ex = True
            lines.append(
                f"**{c}** `{ex['item_id']}` sample {ex['sample']}: fve_nrm {fmt_num(ex['fve_nrm'])}, "
                f"cos {fmt_num(ex['cos'])}, recall {fmt_num(ex['recall'])}"
            )
            lines.append("")
            lines += ["> **Prompt:**"] + _quote(ex["prompt"]) + [">", "> **Explanation:**"] + _quote(ex["explanation"])
            lines.append("")
    if not any_ex:
        lines += ["(none)", ""]
    return lines


def _power(results: dict) -> list[str]:
    pw = results.get("power") or {}
    lines = [
        "## 7. Power",
        "",
        f"Minimum detectable difference between two categories (two-sided alpha {pw.get('alpha')}, power "
        f"{pw.get('power')}) at n = {pw.get('n_per_group')} items per category (the smallest category), "
        "with the pooled within-category std of item means:",
        "",
    ]
    rows = []
    for m, e in (pw.get("metrics") or {}).items():
        ex = e.get("spread_exceeds_mdd")
        rows.append([m, fmt_num(e.get("pooled_std"), 4), fmt_num(e.get("mdd"), 4), fmt_num(e.get("observed_spread"), 4),
                     "n/a" if ex is None else ("yes" if ex else "no")])
    return lines + _table(["Metric", "Pooled std", "MDD", "Observed spread", "Spread > MDD"], rows) + [""]


def _flags(results: dict) -> list[str]:
    fl = results.get("flags") or {}
    lines = ["## 8. Failure flags", ""]
    blocks = [("explanations", fl)]
    if results.get("random_gaussian"):
        blocks.append(("random-Gaussian", results["random_gaussian"].get("flags") or {}))
    if results.get("directions"):
        blocks.append(("directions", results["directions"].get("flags") or {}))
    rows = []
    for name, b in blocks:
        n = b.get("n", 0)
        cnt = b.get("counts") or {}
        rows.append([name, n] + [f"{cnt.get(f, 0)} ({fmt_num((b.get('rates') or {}).get(f))})"
                                 for f in ("truncated", "missing_close_tag", "empty", "cjk_smell")])
    lines += _table(["Rows", "N", "truncated", "missing_close_tag", "empty", "cjk_smell"], rows)
    warns = [w for _, b in blocks for w in (b.get("warnings") or [])]
    lines += [""] + [f"**Warning:** {w}" for w in warns] + ([""] if warns else [])
    return lines


def _recon_controls(results: dict) -> list[str]:
    """Reconstruction-side controls: item specificity, baseline ladder, prefixes, grounding, seeds."""
    lines = ["## 9. Reconstruction-side controls: is fve_nrm item-specific?", ""]
    rp = results.get("recon_permutation")
    if not rp:
        lines += ["Reconstruction permutation floor: not run.", ""]
    else:
        lines += [f"Each activation reconstructed from the explanations of *other* items ({rp['n_perm']} "
                  "permutations; an item's K explanations move together). Real − floor > 0 with a small p means "
                  "the reconstruction is specific to the item, not just to its category (Tier 2 vs Tier 1).", ""]
        rows = []
        for m, blk in rp["metrics"].items():
            o = blk["overall"]
            if o:
                rows.append([m, fmt_num(o["real"]), fmt_est(o["floor_within"]), fmt_est(o["floor_cross"]),
                             fmt_num(o["gap_within"], signed=True), fmt_p(o["p_within"]),
                             fmt_num(o["gap_cross"], signed=True), fmt_p(o["p_cross"])])
        lines += _table(["metric", "real", "floor within-category", "floor cross-category", "real − within", "p",
                         "real − cross", "p"], rows) + [""]
        fv = rp["metrics"].get("fve_nrm", {}).get("per_category", {})
        rows = [[c, fmt_num(b["real"]), fmt_est(b["floor_within"]), fmt_num(b["gap_within"], signed=True),
                 fmt_p(b["p_within"])] for c, b in fv.items() if b]
        lines += ["fve_nrm per category:", ""] + _table(["Category", "real", "floor within", "gap", "p"], rows) + [""]
        lines += [f"- {v}" for v in rp.get("verdicts", {}).values()] + [""]
    bl = results.get("baselines")
    if not bl:
        lines += ["Baseline ladder: not run.", ""]
    else:
        lines += ["Baseline ladder (each rung scored like the real pair; gap = real − rung):", ""]
        rows = []
        for name, r in bl.items():
            if "cos" not in r:
                rows.append([name, "", "", "", "", "", r.get("note", "")])
                continue
            rows.append([name, fmt_est(r["cos"]), fmt_est(r.get("centered_cos")), fmt_est(r["fve_nrm"]),
                         fmt_num(r["fve_nrm"].get("gap_real_minus_this"), signed=True),
                         fmt_est(r.get("recall")), r.get("note", "")])
        lines += _table(["rung", "cos", "centered cos", "fve_nrm", "real − rung (fve_nrm)", "recall", "note"],
                        rows) + [""]
    pf = results.get("prefix")
    if pf:
        lines += ["fve_nrm by explanation prefix (first n sentences; first sample of each item):", ""]
        lines += _table(["sentences", "n", "cos", "fve_nrm"],
                        [[k, v["n"], fmt_num(v["cos"]), fmt_num(v["fve_nrm"])] for k, v in pf.items()
                         if isinstance(v, dict) and "n" in v]) + [""]
    gr = results.get("grounding")
    if gr:
        lines += ["Claim grounding: change when a sentence is appended to the explanation (true = the item's own "
                  "prompt, false = another category's prompt, neutral = a fixed sentence):", ""]
        lines += _table(["appended", "Δ cos", "Δ centered cos", "Δ fve_nrm"],
                        [[k, fmt_est(v.get("cos")), fmt_est(v.get("centered_cos")), fmt_est(v.get("fve_nrm"))]
                         for k, v in gr.items() if isinstance(v, dict)]) + [""]
    sd = results.get("seeds")
    if sd:
        lines += [f"Noise floor: headline numbers over seeds {sd['seeds']} (std = seed-to-seed spread):", ""]
        lines += _table(["number", "mean", "std", "min", "max"],
                        [[k, fmt_num(v["mean"]), fmt_num(v["std"]), fmt_num(v["min"]), fmt_num(v["max"])]
                         for k, v in sd["spread"].items()]) + [""]
    return lines


def render_report(results: dict, meta: dict) -> str:
    """The full Markdown report. ``meta``: ``pair`` (or ``pair_name``), ``layer``, ``corpus`` (or
    ``corpus_name``) and ``config`` (dict; its ``seed`` is shown, else results' settings seed)."""
    meta = meta or {}
    parts = (
        _header(results, meta)
        + _per_category(results)
        + _stability(results)
        + _permutation(results)
        + _random(results)
        + _directions(results)
        + _confab(results)
        + _power(results)
        + _flags(results)
        + _recon_controls(results)
    )
    cfg = meta.get("config")
    if cfg:
        parts += ["## Config", "", "```"] + [f"{k}: {v}" for k, v in cfg.items()] + ["```", ""]
    return "\n".join(parts).rstrip() + "\n"


# ----------------------------------------------------------------------------- terminal summary


def print_summary(results: dict) -> str:
    """One-screen plain-text summary (lm-eval ``make_table`` style); returns the text."""
    cats = list(results.get("categories") or [])
    pc = results.get("per_category") or {}
    sp = results.get("spread") or {}
    cols = [("cos", "cos"), ("fve_nrm", "fve_nrm"), ("recall", "recall"), ("hit", "hit")]
    header = ["Category", "N"] + [c for _, c in cols]
    body = []
    for c in cats + [OVERALL]:
        e = pc.get(c) or {}
        body.append([c, str(e.get("n", 0))] + [fmt_est(e.get(m)) for m, _ in cols])
    body.append(["Spread", ""] + [fmt_num(sp.get(m)) for m, _ in cols])
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]

    def line(cells):
        return "|" + "|".join(f" {c:<{w}} " for c, w in zip(cells, widths)) + "|"

    out = [
        f"N={results.get('n_samples')} ({results.get('n_items')} items x K={results.get('k')}), "
        f"B_rv={fmt_num(results.get('b_rv'), 4)} ({results.get('b_rv_source')})",
        line(header),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ] + [line(r) for r in body]
    pm = (results.get("permutation") or {}).get("overall")
    if pm:
        out.append(
            f"Permutation: real {fmt_num(pm['real'])}, floor within {fmt_num(pm['floor_within']['mean'])} "
            f"(gap {fmt_num(pm['gap_within'], signed=True)}, p={fmt_p(pm['p_within'])}), floor cross "
            f"{fmt_num(pm['floor_cross']['mean'])} (gap {fmt_num(pm['gap_cross'], signed=True)}, p={fmt_p(pm['p_cross'])})"
        )
    rg = results.get("random_gaussian")
    if rg:
        m = rg.get("metrics") or {}
        top = ((rg.get("format_templates") or {}).get("random") or {}).get("first3") or {}
        t0 = (top.get("top") or [{}])[0]
        out.append(
            f"Random Gaussian: cos {fmt_num((m.get('cos') or {}).get('mean'))}, fve_nrm "
            f"{fmt_num((m.get('fve_nrm') or {}).get('mean'))}, recall {fmt_num((m.get('recall') or {}).get('mean'))}; "
            f"top opening \"{t0.get('phrase', '')}\" {fmt_num(t0.get('share'))}"
        )
    else:
        out.append(f"Random Gaussian: {NOT_RUN}")
    d = results.get("directions")
    if d:
        out.append(
            f"Directions: alignment {d['alignment']['text']}, negation symmetry {d['negation_symmetry']['text']}, "
            f"cross {d['cross']['text']}"
        )
    else:
        out.append(f"Directions: {NOT_RUN}")
    fl = results.get("flags") or {}
    out.append("Flags: " + ", ".join(f"{k} {v}" for k, v in (fl.get("counts") or {}).items()))
    for w in results.get("warnings") or []:
        out.append(f"WARNING: {w}")
    return "\n".join(out) + "\n"
