"""``nlalab report RUN_DIR [--compare RUN_DIR ...]``: one self-contained HTML file plus ``plots/`` and report.md.

The HTML file embeds every figure as a base64 PNG data URI and carries its CSS inline: it opens from disk,
attached to an e-mail or on an air-gapped machine, with no network access. The same figures are saved
under ``<run>/plots/*.png`` and ``*.svg`` (for papers). ``report.md`` is the run's Markdown report (the
same renderer ``nlalab run`` uses) with the added-scorer tables and the comparison appended.

Text from the model (explanations) is HTML-escaped, and control characters are shown as ``\\xNN`` so
that a broken generation cannot break the page.
"""

from __future__ import annotations

import base64
import html as _html
import time
import unicodedata
from pathlib import Path
from typing import Optional, Sequence, Union

from nlalab.format import Table, fmt_num
from nlalab.rundir.load import Run, load_runs
from nlalab.report.tables import scorer_tables
from nlalab.study.sections import FVE_DENOMINATORS

__all__ = ["write_report", "render_html", "clean_text"]

CSS = """
:root { --fg:#1d1d1f; --muted:#666; --line:#d9d9de; --bg:#fff; --accent:#1f5fa8; --warn:#fff4e5; --warnline:#f0a020; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Helvetica, Arial, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; line-height: 1.45; font-size: 14px; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 34px 0 10px; padding-top: 8px;
     border-top: 2px solid var(--line); } h3 { font-size: 15px; margin: 20px 0 8px; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 13px; margin: 12px 0; }
.meta dt { color: var(--muted); } .meta dd { margin: 0; word-break: break-all; }
nav { font-size: 13px; margin: 10px 0 0; } nav a { margin-right: 12px; color: var(--accent); text-decoration: none; }
table.t { border-collapse: collapse; margin: 6px 0 6px; font-size: 12.5px; width: auto; max-width: 100%; }
table.t th, table.t td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
table.t th { background: #f3f4f7; font-weight: 600; }
table.t td { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.t.wrap td { white-space: normal; min-width: 7em; }
table.t.wrap td:first-child { min-width: 14em; }
table.t tr:nth-child(even) td { background: #fafafc; }
table.t td:first-child { font-weight: 600; }
.wide { overflow-x: auto; }
p.note { color: var(--muted); font-size: 12px; margin: 4px 0 10px; max-width: 1100px; }
.verdict { background: #eef5ff; border-left: 4px solid var(--accent); padding: 6px 12px; margin: 8px 0; }
.warn { background: var(--warn); border-left: 4px solid var(--warnline); padding: 8px 12px; margin: 8px 0; }
figure { margin: 12px 0 18px; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
.ex { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 8px 0; }
.ex .hdr { font-size: 12px; color: var(--muted); margin-bottom: 4px; }
.ex .row { display: grid; grid-template-columns: 100px 1fr; gap: 8px; }
.ex .lab { font-weight: 600; }
.ex .txt { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; white-space: pre-wrap;
           word-break: break-word; }
code { font-size: 12px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def clean_text(s: object) -> str:
    """HTML-escaped text with control characters (other than newline and tab) shown as ``\\xNN``."""
    out = []
    for ch in str(s if s is not None else ""):
        if ch not in "\n\t" and unicodedata.category(ch) in ("Cc", "Cs", "Co"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return _html.escape("".join(out))


def _img(path: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_html.escape(caption)} (also <code>plots/{_html.escape(path.stem)}.png</code>, "
            f"<code>.svg</code>)</figcaption></figure>")


def _table_html(t: Optional[Table], level: int = 3) -> str:
    return t.to_html(level) if t is not None else ""


def _confab(results: dict) -> str:
    cf = results.get("confabulation") or {}
    parts = [f'<p class="note">Rows with fve_nrm ≥ {fmt_num(cf.get("fve_threshold"))} (the {cf.get("quantile")} '
             f'quantile) and recall ≤ {cf.get("max_recall")}, highest fve_nrm first; {cf.get("n_candidates", 0)} '
             "rows qualify. Verbatim (control characters shown as \\xNN).</p>"]
    n = 0
    for c, exs in (cf.get("per_category") or {}).items():
        for ex in exs:
            n += 1
            parts.append(
                f'<div class="ex"><div class="hdr"><b>{clean_text(c)}</b> · {clean_text(ex["item_id"])} sample '
                f'{ex["sample"]} · fve_nrm {fmt_num(ex.get("fve_nrm"))} · cos {fmt_num(ex.get("cos"))} · recall '
                f'{fmt_num(ex.get("recall"))}</div>'
                f'<div class="row"><span class="lab">Prompt</span><span class="txt">{clean_text(ex["prompt"])}</span></div>'
                f'<div class="row"><span class="lab">Explanation</span>'
                f'<span class="txt">{clean_text(ex["explanation"])}</span></div></div>')
    if n == 0:
        parts.append("<p>(none)</p>")
    return "\n".join(parts)


def _meta(run: Run) -> str:
    info = run.info()
    env = (run.config_dict().get("environment") or {})
    versions = env.get("versions") or {}
    items = [
        ("Run directory", info["dir"]),
        ("Pair", f"{info['pair']} (layer {info['layer']})"),
        ("Corpus", f"{info['corpus']} · sha256 {info['corpus_sha256']}"),
        ("N", f"{info['n_samples']} explanations = {info['n_items']} items × K={info['k']}"),
        ("Sampling", f"temperature {info['temperature']}, max_new_tokens {info['max_new_tokens']}, seed {info['seed']}"),
        ("Statistics", f"95% intervals, cluster bootstrap over items ({info['n_boot']} resamples); "
                       f"permutation floors with {info['n_perm']} permutations; seed {run.settings.get('seed')}"),
        ("B_rv", f"{fmt_num(info['b_rv'], 6)} — {info['b_rv_source']} (mse_scale {info['mse_scale']})"),
        ("Scorers", ", ".join(["keyword (default)"] + [s for s in info["scorers"] if s != "keyword"])),
        ("Software", ", ".join(f"{k} {v}" for k, v in versions.items() if v) + f"; git {env.get('git_commit')}"),
        ("Generated", time.strftime("%Y-%m-%d %H:%M:%S %z")),
    ]
    return '<dl class="meta">' + "".join(f"<dt>{_html.escape(k)}</dt><dd>{clean_text(v)}</dd>" for k, v in items) \
        + "</dl>"


def _figs(figs: dict, prefix: str = "", names: Sequence[str] = ()) -> str:
    """Embedded figures: those whose key starts with ``prefix:`` (a control's), or those named."""
    keys = [k for k in figs if (prefix and k.startswith(prefix + ":")) or k in names]
    return "".join(_img(figs[k].path, figs[k].alt, figs[k].caption) for k in keys)


def _control_html(c, sec: Optional[dict], results: dict, figs: dict) -> str:
    if not sec:
        return f"<p>{_html.escape(c.title)}: not run (select it with <code>--controls</code>).</p>"
    parts = [f'<p class="verdict"><b>Verdict:</b> {clean_text(v)}</p>' for v in c.verdicts(sec)]
    parts += [_table_html(t) for t in c.tables(sec, results)]
    parts.append(_figs(figs, c.name))
    parts += [f'<div class="warn"><b>Warning:</b> {clean_text(w)}</div>' for w in c.warnings(sec)]
    return "\n".join(parts)


def render_html(run: Run, figs: dict, cmp: Optional[dict] = None) -> str:
    """The report page for a loaded run, its figures (name -> Figure) and an optional comparison: every core
    section, one section per registered control (from the registry), power, flags, scorers, the sample
    browser and the comparison."""
    from nlalab.study.controls import registry
    from nlalab.study.sections import confab_markdown, core_tables  # noqa: F401

    res = run.results_dict()
    t = core_tables(res)
    sections: list[tuple[str, str, str]] = []
    t["per_category"].title = t["stability"].title = ""  # the section heading says it
    sections.append(("percat", "Per-category reconstruction and recall (seed §3.1)",
                     _table_html(t["per_category"]) + _table_html(t["incomplete"]) + _table_html(t["by_role"])
                     + _table_html(t["rates"])
                     + _figs(figs, names=("category_fve_recall",))))
    sections.append(("stab", "Within-prompt stability (seed §3.4)",
                     _table_html(t["stability"]) + _figs(figs, names=("stability",))))
    controls = res.get("controls") or {}
    for name, c in registry().items():
        if name in controls:
            sections.append((f"ctl-{name}", c.title, _control_html(c, controls.get(name), res, figs)))
    sections.append(("power", "Power", _table_html(t["power"]) + _figs(figs, names=("power",))))
    sections.append(("flags", "Failure flags", _table_html(t["flags"]) + _figs(figs, names=("flags",))))
    scorer_html = "".join(_table_html(x) for x in scorer_tables(res))
    sections.append(("scorers", "Content scorers",
                     (scorer_html + _figs(figs, names=("scorers",))) if scorer_html else
                     "<p>Only the default keyword scorer was run. Add one with "
                     "<code>nlalab score RUN_DIR --scorer embedding|retrieval|quote</code>.</p>"))
    sections.append(("confab", "Confabulation examples (seed §3.5)", _confab(res)))
    sections.append(("samples", "Sample browser", _browser(run)))
    if cmp is not None:
        from nlalab.report.compare import comparison_tables

        warn = "".join(f'<div class="warn"><b>WARNING:</b> {clean_text(w)}</div>' for w in cmp["warnings"])
        body = warn + "".join(_table_html(x) for x in comparison_tables(cmp)) + _figs(figs, names=("trajectories",))
        sections.append(("compare", "Comparison across runs", body))

    warnings = "".join(f'<div class="warn"><b>Warning:</b> {clean_text(w)}</div>'
                       for w in list(res.get("warnings") or []) + run.score_warnings())
    nav = "<nav>" + "".join(f'<a href="#{a}">{_html.escape(title)}</a>' for a, title, _ in sections) + "</nav>"
    body = "\n".join(f'<section id="{a}"><h2>{i}. {_html.escape(title)}</h2>\n{b}</section>'
                      for i, (a, title, b) in enumerate(sections, 1))
    title = f"NLA evaluation report: {run.name}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{clean_text(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{clean_text(title)}</h1>{_meta(run)}{warnings}{nav}\n{body}\n"
        f"<footer><p>{_html.escape(FVE_DENOMINATORS)}</p><p>Generated by nlalab.report; self-contained (no "
        "network needed): figures are embedded PNGs, SVG copies are in plots/.</p></footer>"
        "</main></body></html>\n"
    )


def _browser(run: Run) -> str:
    """The sample browser: every sample, sortable, filterable and searchable, with each item's K samples and
    control explanations side by side."""
    from nlalab.report.browser import browser_inputs, sample_browser_html

    return sample_browser_html(**browser_inputs(run.dir), title=None, section_id="sample-browser")


def _markdown(run: Run, cmp: Optional[dict], plots: dict[str, Path]) -> str:
    from nlalab.report.compare import to_markdown
    from nlalab.study.report import render_report

    pair = run.config_dict().get("pair") or {}
    cfg = run.config_dict().get("config") or {}
    meta = {"pair": pair.get("name") or (pair.get("av") or {}).get("path") or run.pair_label,
            "layer": pair.get("layer"), "corpus": cfg.get("corpus"), "config": cfg}
    text = render_report(run.results_dict(), meta).rstrip() + "\n\n"
    extra = scorer_tables(run.results_dict())
    if extra:
        text += "## Content scorers\n\n" + "\n".join(t.to_markdown(3) for t in extra) + "\n"
    if cmp is not None:
        text += to_markdown(cmp) + "\n"
    if plots:
        text += "## Plots\n\n" + "\n".join(f"![{f.alt}](plots/{f.path.name})" for f in plots.values()) + "\n"
    return text


def write_report(run_dir: Union[str, Path], compare_dirs: Optional[Sequence[Union[str, Path]]] = None, *,
                 out: Union[str, Path, None] = None, names: Optional[Sequence[str]] = None, markdown: bool = True,
                 n_boot: int = 2000, seed: int = 0) -> Path:
    """Write ``<run_dir>/report.html`` (or ``out``), ``<run_dir>/plots/*.png|svg`` and (``markdown=True``)
    ``<run_dir>/report.md``; return the HTML path. ``compare_dirs``: further runs for the comparison
    section; the comparison is ``[run_dir, *compare_dirs]`` in that order (``names`` labels them all)."""
    from nlalab.report.plots import run_plots
    from nlalab.rundir.io import atomic_write_text

    dirs = [Path(run_dir)] + [Path(d) for d in (compare_dirs or [])]
    runs = load_runs(dirs, list(names) if names is not None else None)
    run = runs[0]
    cmp = None
    if compare_dirs:
        from nlalab.report.compare import compare_runs

        cmp = compare_runs(dirs, [r.name for r in runs], n_boot=n_boot, seed=seed)
    plots = run_plots(run.results_dict(), run.sample_dicts(), run.dir / "plots", cmp, run=run)
    target = Path(out) if out is not None else run.dir / "report.html"
    atomic_write_text(target, render_html(run, plots, cmp))
    if markdown:
        atomic_write_text(run.dir / "report.md", _markdown(run, cmp, plots))
    return target
