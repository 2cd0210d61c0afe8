"""The study's core sections (everything that is not a control): per-category table, stability,
confabulation examples, power and failure flags, as Tables that the terminal summary, report.md and the
HTML report all render."""

from __future__ import annotations

from typing import Optional

from nlalab.format import OVERALL, Table, fmt_est, fmt_num, md_quote

FVE_DENOMINATORS = (
    "fve_nrm = 1 − mse_nrm / B_rv, B_rv = mean squared distance of the reference vectors (normalised to "
    "mse_scale = √d) from their mean (training-repo definition; the reference set is named per run); "
    "fve_nrm_seed = 1 − mse_nrm / var_d(gold), the per-vector variance of the single normalised gold vector "
    "(seed §2.3). The two are not interchangeable."
)
FLAG_NAMES = ("truncated", "missing_close_tag", "empty", "cjk_smell")


def _other_brv(results: dict) -> str:
    """The B_rv candidates not used, named with their source (a run always shows both)."""
    b = results.get("brv") or {}
    out = []
    if b.get("own_value") is not None and b.get("choice") != "own":
        out.append(f"this run's own B_rv {fmt_num(b['own_value'], 6)} ({b.get('own_source')})")
    if b.get("training_value") is not None and b.get("choice") != "registry":
        out.append(f"training-set B_rv {fmt_num(b['training_value'], 6)} ({b.get('training_source')})")
    return ("; " + "; ".join(out)) if out else ""


def spread_verdicts(results: dict) -> list[str]:
    """Is the spread over categories more than chance? (category labels shuffled over items)."""
    return [f"Spread of {m}: {v['verdict']}" for m, v in (results.get("spread_test") or {}).items()
            if isinstance(v, dict) and v.get("verdict")]


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
    return Table("Per-category reconstruction and recall (seed §3.1)",
                 ["Category", "N", "cos", "fve_nrm", "fve_nrm_seed", "recall (mean)", "recall (≥1 hit)"], rows,
                 [f"Mean [95% cluster-bootstrap interval over items]; n= appears where a metric leaves rows out. "
                  f"B_rv = {fmt_num(results.get('b_rv'), 6)} from {results.get('b_rv_source')}{_other_brv(results)}. "
                  + FVE_DENOMINATORS] + spread_verdicts(results),
                 key="per_category")


def incomplete_table(results: dict) -> Optional[Table]:
    """Excluded share per category and, beside the headline, the all-rows means (None when nothing is excluded)."""
    inc = results.get("incomplete") or {}
    share = inc.get("per_category") or {}
    if not share or not share.get("all", {}).get("excluded") or inc.get("score_incomplete") \
            or inc.get("fallback_to_all_rows"):
        return None
    allrows = results.get("per_category_all_rows") or {}
    head = results.get("per_category") or {}
    rows = []
    for c in list(results.get("categories") or []) + ["all"]:
        e = share.get(c) or {}
        key = OVERALL if c == "all" else c
        rows.append([key, f"{e.get('excluded', 0)}/{e.get('n', 0)} ({fmt_num(e.get('share'), 2)})",
                     fmt_est((head.get(key) or {}).get("fve_nrm"), n=False),
                     fmt_est((allrows.get(key) or {}).get("fve_nrm"), n=False) if allrows else "n/a",
                     fmt_est((head.get(key) or {}).get("recall"), n=False),
                     fmt_est((allrows.get(key) or {}).get("recall"), n=False) if allrows else "n/a"])
    return Table("Incomplete explanations: excluded share and all-rows figures",
                 ["Category", "excluded (share)", "fve_nrm headline", "fve_nrm all rows", "recall headline",
                  "recall all rows"], rows, [f"Policy: {inc.get('policy')}."], key="incomplete")


def role_table(results: dict) -> Optional[Table]:
    """fve_nrm and recall by position role (prompt / reply tokens) for runs at several positions per item."""
    by_role = results.get("by_role") or {}
    if not by_role:
        return None
    rows = []
    for role, pc in by_role.items():
        for c in list(results.get("categories") or []) + [OVERALL]:
            e = pc.get(c)
            if e:
                rows.append([role, c, str(e.get("n", 0)), fmt_est(e.get("cos"), n=False), fmt_est(e.get("fve_nrm"), n=False),
                             fmt_est(e.get("recall"), n=False)])
    return Table("By position role", ["Role", "Category", "N", "cos", "fve_nrm", "recall"], rows,
                 ["Every captured (item, token) is a unit (item@token_index); prompt = a token of the chat-templated "
                  "prompt, reply = a token of the target's own greedy reply."], key="by_role")


def rates_table(results: dict) -> Table:
    cats = list(results.get("categories") or [])
    pc = results.get("per_category") or {}
    sp = results.get("spread") or {}
    other = ["mse_nrm", "length_words"] + list(FLAG_NAMES)
    rows = [[c] + [fmt_est((pc.get(c) or {}).get(m), 1 if m == "length_words" else 3, n=False) for m in other]
            for c in cats + [OVERALL]]
    rows.append(["Spread"] + [fmt_num(sp.get(m), 1 if m == "length_words" else 3) for m in other])
    return Table("Other per-category rates", ["Category", "mse_nrm", "words", "truncated", "missing close tag",
                                               "empty", "cjk_smell"], rows, key="rates")


def stability_table(results: dict) -> Table:
    st = results.get("stability") or {}
    rows = []
    for c in list(results.get("categories") or []) + [OVERALL]:
        e = st.get(c) or {}
        r = [c, str((e.get("fve_nrm") or {}).get("n_items", "n/a"))]
        for m in ("cos", "fve_nrm", "recall"):
            r += [fmt_num((e.get(m) or {}).get("within")), fmt_num((e.get(m) or {}).get("cross"))]
        rows.append(r)
    note = (results.get("settings") or {}).get("stability_note") or (
        "within = mean over items of the std over the item's K samples; cross = std over items of the item means.")
    return Table("Within-prompt stability (seed §3.4)",
                 ["Category", "items", "cos within", "cos cross", "fve_nrm within", "fve_nrm cross", "recall within",
                  "recall cross"], rows, [note], key="stability")


def power_table(results: dict) -> Table:
    pw = results.get("power") or {}
    rows = []
    for m, e in (pw.get("metrics") or {}).items():
        e = e or {}  # None: the metric is undefined on this run (e.g. fve_nrm with a degenerate B_rv)
        ex = e.get("spread_exceeds_mdd")
        rows.append([m, fmt_num(e.get("pooled_std"), 4), fmt_num(e.get("mdd"), 4), fmt_num(e.get("observed_spread"), 4),
                     "n/a" if ex is None else ("yes" if ex else "no")])
    return Table("Power: minimum detectable difference between two categories",
                 ["Metric", "Pooled std", "MDD", "Observed spread", "Spread > MDD"], rows,
                 [f"Two-sided alpha {pw.get('alpha')}, power {pw.get('power')}, at n = {pw.get('n_per_group')} items "
                  "per category (the smallest category), with the pooled within-category std of item means. A spread "
                  "below the MDD is not evidence of uniformity: this n could not have detected it."], key="power")


def flag_blocks(results: dict) -> list[tuple[str, dict]]:
    """(rows name, flag counts) for the explanations and for every control that counted flags."""
    blocks = [("explanations", results.get("flags") or {})]
    for name, sec in (results.get("controls") or {}).items():
        if isinstance(sec, dict) and isinstance(sec.get("flags"), dict):
            blocks.append((name, sec["flags"]))
    return blocks


def flags_table(results: dict) -> Table:
    rows = []
    for name, b in flag_blocks(results):
        cnt, rates = b.get("counts") or {}, b.get("rates") or {}
        rows.append([name, str(b.get("n", 0))] + [f"{cnt.get(f, 0)} ({fmt_num(rates.get(f))})" for f in FLAG_NAMES])
    return Table("Failure flags", ["Rows", "N"] + list(FLAG_NAMES), rows,
                 ["count (rate). truncated: the AV hit max_new_tokens; missing_close_tag: no closing tag; cjk_smell: "
                  "mostly CJK-looking output, a sign the injection failed."], key="flags")


def confab_markdown(results: dict) -> list[str]:
    cf = results.get("confabulation") or {}
    lines = [f"Rows with fve_nrm ≥ {fmt_num(cf.get('fve_threshold'))} (the {cf.get('quantile')} quantile) and recall ≤ "
             f"{cf.get('max_recall')}, highest fve_nrm first; {cf.get('n_candidates', 0)} rows qualify. Verbatim:", ""]
    any_ex = False
    for c, exs in (cf.get("per_category") or {}).items():
        for ex in exs:
            any_ex = True
            lines += [f"**{c}** `{ex['item_id']}` sample {ex['sample']}: fve_nrm {fmt_num(ex['fve_nrm'])}, cos "
                      f"{fmt_num(ex['cos'])}, recall {fmt_num(ex['recall'])}", ""]
            lines += ["> **Prompt:**"] + md_quote(ex["prompt"]) + [">", "> **Explanation:**"] + md_quote(ex["explanation"])
            lines.append("")
    return lines + ([] if any_ex else ["(none)", ""])


def core_tables(results: dict) -> dict[str, Optional[Table]]:
    return {"per_category": per_category_table(results), "incomplete": incomplete_table(results),
            "by_role": role_table(results),
            "rates": rates_table(results),
            "stability": stability_table(results), "power": power_table(results), "flags": flags_table(results)}
