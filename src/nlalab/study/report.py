"""report.md and the terminal summary of one run: the core sections (nlalab.study.sections), then every
control of the registry rendering its own section ("not run" for a registered control the run skipped)."""

from __future__ import annotations

from typing import Any, Optional

from nlalab.format import NOT_RUN, OVERALL, fmt_est, fmt_num
from nlalab.study import sections as S

__all__ = ["render_report", "print_summary"]


def _meta_get(meta: dict, *keys: str, default: Any = "?") -> Any:
    for k in keys:
        if meta.get(k) not in (None, ""):
            return meta[k]
    return default


def _header(results: dict, meta: dict) -> list[str]:
    cfg = meta.get("config") or {}
    settings = results.get("settings") or {}
    pair = _meta_get(meta, "pair", "pair_name", "name")
    lines = [
        f"# NLA evaluation report: {pair}", "",
        f"- **Pair:** {pair}",
        f"- **Layer:** {_meta_get(meta, 'layer')}",
        f"- **Corpus:** {_meta_get(meta, 'corpus', 'corpus_name')}",
        f"- **N (explanations):** {results.get('n_samples')} ({results.get('n_items')} items)",
        f"- **K (samples per item):** {results.get('k')}",
        f"- **Seed:** {cfg.get('seed', settings.get('seed', '?'))}",
        f"- **B_rv:** {fmt_num(results.get('b_rv'), 6)} (source: {results.get('b_rv_source')})",
        f"- **Uncertainty:** 95% percentile intervals; per-category means use the cluster bootstrap over items "
        f"({settings.get('n_boot', '?')} resamples); permutation floors use {settings.get('n_perm', '?')} permutations.",
    ]
    lines += [f"- **Warning:** {w}" for w in results.get("warnings") or []]
    return lines + [""]


def render_report(results: dict, meta: Optional[dict] = None) -> str:
    """The Markdown report. ``meta``: ``pair``, ``layer``, ``corpus`` and ``config`` (shown at the end)."""
    from nlalab.study.controls import registry

    meta = meta or {}
    t = S.core_tables(results)
    parts = _header(results, meta)
    parts += [t["per_category"].to_markdown(2)] + [t[k].to_markdown(3) for k in ("incomplete", "by_role") if t[k]]
    parts += [t["rates"].to_markdown(3),
              t["stability"].to_markdown(2),
              "## Confabulation examples (seed §3.5)", ""] + S.confab_markdown(results)
    controls = results.get("controls") or {}
    for name, c in registry().items():
        if name in controls:
            parts.append(c.markdown(controls[name], results))
    parts += [t["power"].to_markdown(2), t["flags"].to_markdown(2)]
    flag_warn = [w for _, b in S.flag_blocks(results) for w in (b.get("warnings") or [])]
    parts += [f"**Warning:** {w}\n" for w in flag_warn]
    cfg = meta.get("config")
    if cfg:
        parts += ["## Config", "", "```"] + [f"{k}: {v}" for k, v in cfg.items()] + ["```", ""]
    return "\n".join(parts).rstrip() + "\n"


def print_summary(results: dict) -> str:
    """One-screen plain-text summary (lm-eval ``make_table`` style); returns the text."""
    from nlalab.study.controls import registry

    cats = list(results.get("categories") or [])
    pc = results.get("per_category") or {}
    sp = results.get("spread") or {}
    cols = ("cos", "fve_nrm", "fve_nrm_seed", "recall", "hit")
    header = ["Category", "N"] + list(cols)
    body = [[c, str((pc.get(c) or {}).get("n", 0))] + [fmt_est((pc.get(c) or {}).get(m), n=False) for m in cols]
            for c in cats + [OVERALL]]
    body.append(["Spread", ""] + [fmt_num(sp.get(m)) for m in cols])
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]

    def line(cells):
        return "|" + "|".join(f" {c:<{w}} " for c, w in zip(cells, widths)) + "|"

    out = [f"N={results.get('n_samples')} ({results.get('n_items')} items x K={results.get('k')}), "
           f"B_rv={fmt_num(results.get('b_rv'), 4)} ({results.get('b_rv_source')})",
           line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in body]
    from nlalab.study.sections import spread_verdicts

    out += spread_verdicts(results)
    controls = results.get("controls") or {}
    for name, c in registry().items():
        if name not in controls:
            continue
        sec = controls[name]
        out += c.summary(sec, results) if sec else [f"{c.title}: {NOT_RUN}"]
    fl = results.get("flags") or {}
    out.append("Flags: " + ", ".join(f"{k} {v}" for k, v in (fl.get("counts") or {}).items()))
    out += [f"WARNING: {w}" for w in results.get("warnings") or []]
    return "\n".join(out) + "\n"
