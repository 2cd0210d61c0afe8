"""Tables of the scorers added to a run with ``nlalab score`` (the core and control tables are built by
``nlalab.study.sections`` and by each control)."""

from __future__ import annotations

from nlalab.format import OVERALL, Table, fmt_est, fmt_num, fmt_p

__all__ = ["scorer_tables"]


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
