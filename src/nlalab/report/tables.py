"""Tables of one run (and of its added scorers) as plain data, rendered to Markdown, HTML or text.

Every mean is printed as ``mean [lo, hi]`` (95% interval) with its ``n`` beside it: either in the row's N
column or, where a metric leaves rows out (recall of prompts without content words, quote fidelity of
explanations without quotes), as ``n=…`` in the cell.
"""

from __future__ import annotations

import html as _html
from dataclasses import dataclass, field
from typing import Any, Optional

from nlalab.study.report import direction_verdict, fmt_num

__all__ = [
    "Table",
    "fmt_num",
    "fmt_est",
    "fmt_p",
    "per_category_table",
    "permutation_table",
    "permutation_category_table",
    "random_gaussian_table",
    "directions_table",
    "stability_table",
    "scorer_tables",
    "run_tables",
    "FVE_DENOMINATORS",
]

OVERALL = "OVERALL"

FVE_DENOMINATORS = (
    "fve_nrm = 1 − mse_nrm / B_rv, B_rv = mean squared distance of the reference vectors (normalised to "
    "mse_scale = √d) from their mean (training-repo definition; the reference set is named per run); "
    "fve_nrm_seed = 1 − mse_nrm / var_d(gold), the per-vector variance of the single normalised gold vector "
    "(seed §2.3). The two are not interchangeable."
)


def fmt_p(p: Optional[float]) -> str:
    if p is None:
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_est(e: Optional[dict], digits: int = 3, n: Optional[bool] = True, signed: bool = False,
            n_expected: Optional[int] = None) -> str:
    """``mean [lo, hi] n=N``. ``n=False`` drops the n; ``n_expected`` drops it when equal (an N column says it)."""
    if not e or e.get("mean") is None:
        return "n/a"
    m = fmt_num(e["mean"], digits, signed)
    lo, hi = e.get("lo"), e.get("hi")
    s = m if lo is None or hi is None else f"{m} [{fmt_num(lo, digits, signed)}, {fmt_num(hi, digits, signed)}]"
    if n and e.get("n") is not None and (n_expected is None or int(e["n"]) != int(n_expected)):
        s += f" n={e['n']}"
    if e.get("p") is not None:
        s += f" p={fmt_p(e['p'])}"
    return s


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    key: str = ""
    wrap: bool = False  # HTML: let long cells wrap instead of scrolling sideways

    def to_markdown(self, level: int = 3) -> str:
        def cell(s: Any) -> str:
            return str(s).replace("|", "\\|").replace("\r", " ").replace("\n", " ")

        out = [f"{'#' * level} {self.title}", ""] if self.title else []
        out.append("| " + " | ".join(cell(h) for h in self.header) + " |")
        out.append("|" + "|".join("---" for _ in self.header) + "|")
        out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in self.rows]
        if self.notes:
            out += [""] + self.notes
        return "\n".join(out) + "\n"

    def to_html(self, level: int = 3) -> str:
        e = _html.escape
        head = "".join(f"<th>{e(str(h))}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in self.rows)
        parts = [f"<h{level}>{e(self.title)}</h{level}>"] if self.title else []
        cls = "t wrap" if self.wrap else "t"
        parts.append(f'<table class="{cls}" data-table="{e(self.key)}"><thead><tr>{head}</tr></thead>'
                     f"<tbody>{body}</tbody></table>")
        parts += [f'<p class="note">{e(n)}</p>' for n in self.notes]
        return "\n".join(parts)

    def to_text(self) -> str:
        cells = [list(map(str, self.header))] + [list(map(str, r)) for r in self.rows]
        widths = [max(len(r[i]) if i < len(r) else 0 for r in cells) for i in range(len(self.header))]

        def line(r):
            return "| " + " | ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + " |"

        out = [self.title] if self.title else []
        out += [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]]
        out += self.notes
        return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- builders


def per_category_table(results: dict) -> Table:
    cats = list(results.get("categories") or [])
    pc = results.get("per_category") or {}
    sp = results.get("spread") or {}
    cols = ["cos", "fve_nrm", "fve_nrm_seed", "recall", "hit"]
    rows = []
    for c in cats + [OVERALL]:
        e = pc.get(c) or {}
        n = e.get("n", 0)
        rows.append([c, f"{n} ({e.get('n_items', '?')} items)"] + [fmt_est(e.get(m), n_expected=n) for m in cols])
    rows.append(["Spread (max − min)", ""] + [fmt_num(sp.get(m)) for m in cols])
    return Table(
        "Per-category reconstruction and recall (seed §3.1)",
        ["Category", "N", "cos", "fve_nrm", "fve_nrm_seed", "recall (mean)", "recall (≥1 hit)"],
        rows,
        [f"Mean [95% cluster-bootstrap interval over items]; n= appears where a metric leaves rows out. "
         f"B_rv = {fmt_num(results.get('b_rv'), 6)} from {results.get('b_rv_source')}. " + FVE_DENOMINATORS],
        key="per_category",
    )


def _real(results: dict, group: str, block: dict) -> str:
    """The real recall of a permutation block with the cluster-bootstrap CI of the same rows (per_category)."""
    e = ((results.get("per_category") or {}).get(group) or {}).get("recall")
    if e and e.get("mean") is not None and abs(float(e["mean"]) - float(block["real"])) < 1e-9:
        return fmt_est(e, n=False)
    return fmt_num(block["real"])


def permutation_table(results: dict) -> Optional[Table]:
    pm = results.get("permutation") or {}
    o = pm.get("overall")
    if not o:
        return None
    n_perm = pm.get("n_perm")
    rows = [
        ["Real", _real(results, OVERALL, o), f"{o.get('n_rows')} rows / {o.get('n_items')} items", ""],
        ["Permuted within-category", fmt_est(o["floor_within"], n=False), f"{n_perm} permutations", ""],
        ["Permuted cross-category", fmt_est(o["floor_cross"], n=False), f"{n_perm} permutations", ""],
        ["Real − perm-cross", fmt_num(o["gap_cross"], signed=True), f"{o.get('n_items')} items", fmt_p(o["p_cross"])],
        ["Real − perm-within", fmt_num(o["gap_within"], signed=True), f"{o.get('n_items')} items", fmt_p(o["p_within"])],
    ]
    return Table("Permutation control: keyword recall (seed §4.1)", ["Pairing", "Recall", "n", "p"], rows,
                 [f"Unit shuffled: {pm.get('unit')}. Floors: mean of the permutation distribution [2.5%, 97.5%]; "
                  "p: permutation p-value, alternative 'greater'."], key="permutation")


def permutation_category_table(results: dict) -> Optional[Table]:
    pm = results.get("permutation") or {}
    if not pm.get("overall"):
        return None
    rows = []
    for c in results.get("categories") or []:
        e = (pm.get("per_category") or {}).get(c)
        if not e:
            rows.append([c, "n/a", "n/a", "n/a", "n/a", "n/a"])
            continue
        rows.append([c, f"{e['n_rows']} / {e['n_items']}", _real(results, c, e), fmt_est(e["floor_within"], n=False),
                     fmt_num(e["gap_within"], signed=True), fmt_p(e["p_within"])])
    return Table("Per category: gap above the within-category floor",
                 ["Category", "n rows / items", "Real recall", "Permuted-within", "Δ", "p"], rows,
                 key="permutation_per_category")


def random_gaussian_table(results: dict) -> Optional[Table]:
    rg = results.get("random_gaussian")
    if not rg:
        return None
    rows = []
    for c in rg.get("comparison") or []:
        label = "recall vs random real prompt" if c["metric"] == "recall" else c["metric"]
        rows.append([label, fmt_est(c.get("real")), fmt_est(c.get("random")), fmt_num(c.get("diff"), signed=True)])
    return Table("Random-Gaussian control (seed §4.2)", ["Metric", "Real", "Random Gaussian", "Real − random"], rows,
                 [f"{rg.get('n')} explanations of {rg.get('n_vectors')} L2-matched random vectors; "
                  f"CIs: {rg.get('ci_method')}."], key="random_gaussian")


def directions_table(results: dict) -> Optional[Table]:
    d = results.get("directions")
    if not d:
        return None
    lc = list(d.get("lexicon_categories") or [])
    rows = []
    for e in d.get("rows") or []:
        rows.append([e["direction"], e["kind"], str(e.get("n"))] + [fmt_num(e["mean_hits"].get(c), 2) for c in lc]
                    + [direction_verdict(e)])
    return Table("Direction-injection control (seed §4.3)", ["Direction", "kind", "n"] + lc + ["top"], rows,
                 [f"Mean lexicon hits per explanation. Alignment (self) {d['alignment']['text']}, negation symmetry "
                  f"{d['negation_symmetry']['text']}, cross-axis {d['cross']['text']}. Rule: {d.get('rule')}."],
                 key="directions")


def stability_table(results: dict) -> Table:
    st = results.get("stability") or {}
    cats = list(results.get("categories") or [])
    rows = []
    for c in cats + [OVERALL]:
        e = st.get(c) or {}
        r = [c, str((e.get("fve_nrm") or {}).get("n_items", "n/a"))]
        for m in ("cos", "fve_nrm", "recall"):
            r += [fmt_num((e.get(m) or {}).get("within")), fmt_num((e.get(m) or {}).get("cross"))]
        rows.append(r)
    return Table("Within-prompt stability (seed §3.4)",
                 ["Category", "items", "cos within", "cos cross", "fve_nrm within", "fve_nrm cross", "recall within",
                  "recall cross"], rows,
                 ["within = mean over items of the std over the item's K samples (ddof=0); cross = std over items "
                  "of the item means (ddof=1)."], key="stability")


def scorer_tables(results: dict) -> list[Table]:
    """One table per added scorer (``results["scorers"]``): per-category means, floors, gaps, chance."""
    out = []
    cats = list(results.get("categories") or [])
    for name, sec in sorted((results.get("scorers") or {}).items()):
        metrics = list(sec.get("metrics") or [])
        pc = sec.get("per_category") or {}
        header = ["Category", "N"] + [sec.get("labels", {}).get(m, m) for m in metrics]
        rows = []
        for c in cats + [OVERALL]:
            e = pc.get(c) or {}
            rows.append([c, str(e.get("n", 0))] + [fmt_est(e.get(m), n_expected=e.get("n")) for m in metrics])
        rows.append(["Spread (max − min)", ""] + [fmt_num((sec.get("spread") or {}).get(m)) for m in metrics])
        perm = (sec.get("permutation") or {}).get("metrics") or {}
        for label, key in (("Floor within-category", "floor_within"), ("Floor cross-category", "floor_cross")):
            rows.append([label, f"{sec.get('settings', {}).get('n_perm')} perms"]
                        + [fmt_est(((perm.get(m) or {}).get("overall") or {}).get(key), n=False) for m in metrics])
        for label, key, pk in (("Gap above cross floor", "gap_cross", "p_cross"),
                               ("Gap above within floor", "gap_within", "p_within")):
            cells, n_items = [], ""
            for m in metrics:
                o = (perm.get(m) or {}).get("overall")
                cells.append(f"{fmt_num(o[key], signed=True)} p={fmt_p(o[pk])}" if o else "n/a")
                n_items = n_items or (f"{o['n_items']} items" if o else "")
            rows.append([label, n_items] + cells)
        chance = sec.get("chance") or {}
        if any(chance.get(m) is not None for m in metrics):
            rows.append([f"Chance (n={sec.get('n_candidates')} candidates)", ""]
                        + [fmt_num(chance.get(m)) for m in metrics])
        desc = sec.get("description") or {}
        notes = [f"Scorer '{name}': " + "; ".join(f"{k}: {v}" for k, v in desc.items() if k != "path"),
                 f"Floors use the keyword control's permutation estimator and permutations (seed "
                 f"{sec.get('settings', {}).get('seed')}); defined rows: "
                 + ", ".join(f"{m} {v}/{sec.get('n_rows')}" for m, v in (sec.get("n_defined") or {}).items()) + "."]
        out.append(Table(f"Content scorer: {name}", header, rows, notes, key=f"scorer_{name}"))
    return out


def run_tables(results: dict) -> list[Table]:
    t = [per_category_table(results), stability_table(results), permutation_table(results),
         permutation_category_table(results), random_gaussian_table(results), directions_table(results)]
    return [x for x in t if x is not None] + scorer_tables(results)
