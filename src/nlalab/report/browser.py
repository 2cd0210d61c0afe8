"""The sample browser of the HTML report: every sample of a run in one sortable, filterable table.

A researcher's question after the summary numbers is "show me the rows": which explanations scored a high
fve_nrm with no shared word (confabulation), what a truncated generation looks like, what the controls wrote
for the same item. :func:`sample_browser_html` returns one ``<section>`` holding its own CSS, its own script
and the data as JSON, so the report stays one file that opens from disk with no network.

Design choices, and why:

- The data travels once, as JSON in ``<script type="application/json">`` (items stored once, rows as arrays):
  5,000 rows are ~1 MB, and the page renders only one page of rows at a time, so sorting, filtering and
  paging touch an index array, not the DOM, and stay instant.
- Text reaches the page only through ``textContent``/text nodes, never ``innerHTML``: an explanation holding
  ``</script>`` or ``<img onerror=...>`` is shown, not run. In the JSON, ``<``, ``>``, ``&``, U+2028 and U+2029
  are escaped; lone surrogates (invalid UTF-8 from a broken generation) become U+FFFD and control characters
  their visible Unicode "control pictures" (U+2400 block), which, being non-ASCII, split words exactly as the
  original character did, so highlighting agrees with the scorer.
- Highlighting uses the scorer's own definition (:func:`nlalab.scorers.keyword.content_words`): the prompt's
  content words are computed here, in Python, and the page marks an explanation token when its lower-cased
  form is one of them (the same ``[A-Za-z0-9]+`` tokens). A ``<mark>`` is therefore exactly a word that counts
  towards that row's recall.

One module (~550 lines) because most of it is the browser's embedded CSS and JavaScript, which must travel as
one self-contained fragment (no CDN, file:// URLs); the Python around it only prepares and escapes the data.
"""

from __future__ import annotations

import html as _html
import json
import math
import numbers
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

from nlalab.errors import UsageError

__all__ = ["sample_browser_html", "controls_by_item", "browser_inputs", "display_text", "DEFAULT_COLUMNS",
           "FLAGS"]

#: Numeric columns shown by default (any numeric key of the sample rows can be added).
DEFAULT_COLUMNS: tuple[str, ...] = ("cos", "fve_nrm", "recall")
#: Boolean flags of a generation, in display order.
FLAGS: tuple[str, ...] = ("truncated", "missing_close_tag", "empty", "cjk_smell")
_FIXED = ("item", "item_id", "sample", "category", "prompt", "explanation", "flags")
_PAGE_SIZES = (50, 100, 250, 1000)


def display_text(s: object) -> str:
    """Text safe to embed and show: lone surrogates -> U+FFFD, C0 controls and DEL -> their control
    pictures (U+2400..U+2421), C1 controls -> U+FFFD; newline and tab are kept."""
    out = []
    for ch in "" if s is None else str(s):
        o = ord(ch)
        if ch in "\n\t":
            out.append(ch)
        elif o < 0x20:
            out.append(chr(0x2400 + o))
        elif o == 0x7F:
            out.append("\u2421")
        elif 0x80 <= o <= 0x9F or unicodedata.category(ch) == "Cs":
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def _num(v: object, col: str, where: str) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, numbers.Real):  # numpy scalars included
        f = float(v)
        return f if math.isfinite(f) else None  # NaN/Inf read as n/a (JSON has no NaN)
    raise UsageError(f"{where}: column {col!r} holds {v!r}, not a number. Fix: pass numeric columns only "
                     f"(columns=...), or convert the value before building the browser.")


def _json_for_script(obj: object) -> str:
    """JSON that cannot end its ``<script>`` element or be read as markup."""
    s = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _check_columns(columns: Sequence[str], samples: list[dict]) -> list[str]:
    if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
        raise UsageError(f"columns={columns!r}: expected a non-empty list of numeric column names, e.g. "
                         f"{list(DEFAULT_COLUMNS)}. Fix: pass such a list or leave the default.")
    cols = list(columns)
    for c in cols:
        if not isinstance(c, str) or c in _FIXED or c in FLAGS:
            raise UsageError(f"columns: {c!r} is not a numeric column (item, category, prompt, explanation and "
                             f"flags are always shown). Fix: name numeric keys of the sample rows, e.g. "
                             f"{list(DEFAULT_COLUMNS)}.")
    if len(set(cols)) != len(cols):
        raise UsageError(f"columns={cols}: a column is named twice. Fix: name each column once.")
    if samples and list(columns) != list(DEFAULT_COLUMNS):
        present = set().union(*(r.keys() for r in samples))
        missing = [c for c in cols if c not in present]
        if missing:
            numeric = sorted(k for k in present if k not in _FIXED and k not in FLAGS
                             and any(isinstance(r.get(k), (int, float)) for r in samples[:50]))
            raise UsageError(f"columns: {missing} in no sample row. Fix: choose from the rows' numeric "
                             f"keys: {numeric}.")
    return cols


def sample_browser_html(
    samples: Sequence[Mapping],
    *,
    categories: Sequence[str],
    controls: Optional[Mapping[str, Sequence[Mapping]]] = None,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    stopwords: Optional[Iterable[str]] = None,
    page_size: int = 100,
    section_id: str = "samples",
    title: Optional[str] = "Samples",
) -> str:
    """One ``<section>`` (inline CSS, JS and JSON data) browsing ``samples``.

    ``samples``: the run's rows (``samples.jsonl``): ``item_id``, ``category``, ``prompt``, ``explanation``,
    optional ``sample``, the numeric ``columns`` and the boolean :data:`FLAGS` (missing -> n/a / false).
    ``categories``: the run's category order (the filter lists them in this order; categories met only in
    the rows are appended). ``controls``: control name -> rows with ``item_id`` and ``explanation``
    (optional ``sample``), shown beside the item's own samples in the item view; see :func:`controls_by_item`
    for turning a run's control files into that shape. ``stopwords``: the run's stopwords when it did not
    use the shipped list, so highlighted words are exactly the words recall counted. ``title=None``: no
    heading of its own, for a caller that puts the section under its own ``<h2>``.
    """
    from nlalab.scorers.keyword import content_words

    if isinstance(samples, (str, bytes, Mapping)) or not isinstance(samples, Sequence):
        raise UsageError(f"samples: expected a list of row dicts, got {type(samples).__name__}. Fix: pass the "
                         "rows of samples.jsonl (nlalab.rundir.io.read_jsonl).")
    if isinstance(categories, str) or not isinstance(categories, Sequence):
        raise UsageError(f"categories={categories!r}: expected a list of category names. Fix: pass "
                         "results['categories'].")
    if not isinstance(page_size, int) or isinstance(page_size, bool) or page_size < 1:
        raise UsageError(f"page_size={page_size!r}: expected a positive integer. Fix: e.g. page_size=100.")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", section_id or ""):
        raise UsageError(f"section_id={section_id!r}: expected an HTML id (letters, digits, '-', '_', starting "
                         "with a letter). Fix: e.g. section_id='samples'.")
    rows_in = list(samples)
    for i, r in enumerate(rows_in):
        if not isinstance(r, Mapping):
            raise UsageError(f"samples[{i}]: expected a dict, got {type(r).__name__}. Fix: pass row dicts.")
        for key in ("item_id", "explanation"):
            if key not in r:
                raise UsageError(f"samples[{i}]: no {key!r} key. Fix: pass the rows of samples.jsonl, which "
                                 "carry item_id, category, prompt and explanation.")
    cols = _check_columns(columns, rows_in)
    stop = None if stopwords is None else frozenset(w.lower() for w in stopwords)

    cats = [str(c) for c in categories]
    items: list[list] = []
    item_index: dict[str, int] = {}
    rows: list[list] = []
    per_item_count: dict[int, int] = {}
    for i, r in enumerate(rows_in):
        iid = str(r["item_id"])
        if iid not in item_index:
            cat = "(no category)" if r.get("category") is None else str(r.get("category"))
            if cat not in cats:
                cats.append(cat)
            prompt = "" if r.get("prompt") is None else str(r.get("prompt"))
            item_index[iid] = len(items)
            items.append([display_text(iid), cats.index(cat), display_text(prompt),
                          sorted(content_words(prompt, stop))])
        ix = item_index[iid]
        k = per_item_count.get(ix, 0)
        per_item_count[ix] = k + 1
        sample = r.get("sample")
        bits = sum(1 << j for j, f in enumerate(FLAGS) if r.get(f))
        rows.append([ix, int(sample) if isinstance(sample, int) and not isinstance(sample, bool) else k,
                     display_text(r.get("explanation")), bits]
                    + [_num(r.get(c), c, f"samples[{i}]") for c in cols])

    ctrl: dict[str, list[list]] = {}
    for name, crow in (controls or {}).items():
        out = ctrl.setdefault(str(name), [])
        for j, r in enumerate(crow):
            if not isinstance(r, Mapping) or "item_id" not in r or "explanation" not in r:
                raise UsageError(f"controls[{name!r}][{j}]: expected a dict with 'item_id' and 'explanation'. "
                                 "Fix: map the control's rows to items first (nlalab.report.browser."
                                 "controls_by_item).")
            iid = str(r["item_id"])
            if iid not in item_index:
                raise UsageError(f"controls[{name!r}][{j}]: item_id {iid!r} is not among the samples' items. "
                                 "Fix: pass the control rows of the same run as the samples.")
            s = r.get("sample")
            out.append([item_index[iid], int(s) if isinstance(s, int) and not isinstance(s, bool) else None,
                        display_text(r.get("explanation"))])

    data = {"cols": cols, "flags": list(FLAGS), "cats": [display_text(c) for c in cats], "items": items,
            "rows": rows, "controls": ctrl, "page": page_size,
            "pageSizes": sorted(set(_PAGE_SIZES) | {page_size})}
    # concatenation, not str.format: the CSS, the JS and the data all hold braces
    if title is None:
        heading, label = "", 'aria-label="Sample browser"'
    else:
        heading = f'<h2 id="{section_id}-h">{_html.escape(display_text(title))}</h2>'
        label = f'aria-labelledby="{section_id}-h"'
    head = (_TEMPLATE_HEAD.replace("{css}", _CSS).replace("{sid}", section_id).replace("{label}", label)
            .replace("{heading}", heading))
    return (head + '<script type="application/json" class="nb-data">'
            + _json_for_script(data) + "</script>\n<script>" + _JS + "</script>\n</section>")


# ------------------------------------------------------------------------------------------ run inputs


def controls_by_item(
    samples: Sequence[Mapping],
    raw: Mapping[str, Sequence[Mapping]],
    *,
    item_indexed: Optional[Iterable[str]] = None,
) -> dict[str, list[dict]]:
    """A run's control rows keyed by item, the shape :func:`sample_browser_html` reads.

    A row's item is its ``item_id``, else its ``paired_item_id`` (random_gaussian pairs each random vector
    with an item), else -- for controls whose ``vector_index`` *is* the item's index in the run (``blind``
    and the ``seed<N>`` re-runs, the default of ``item_indexed``) -- the item of the samples with that
    ``vector_index``. Rows with none of these (``directions``: one vector per category) are left out.
    """
    by_vi = {}
    for r in samples:
        if "vector_index" in r and "item_id" in r:
            by_vi.setdefault(r["vector_index"], r["item_id"])
    indexed = set(item_indexed) if item_indexed is not None else None
    out: dict[str, list[dict]] = {}
    for name, rows in raw.items():
        use_vi = name in indexed if indexed is not None else (name == "blind" or re.fullmatch(r"seeds?\d*", name))
        keep = []
        for r in rows:
            iid = r.get("item_id", r.get("paired_item_id"))
            if iid is None and use_vi and r.get("vector_index") in by_vi:
                iid = by_vi[r["vector_index"]]
            if iid is not None and "explanation" in r:
                keep.append({"item_id": iid, "sample": r.get("sample"), "explanation": r["explanation"]})
        if keep:
            out[name] = keep
    return out


def browser_inputs(run_dir: Union[str, Path]) -> dict:
    """``samples``, ``categories`` and item-keyed ``controls`` of a run directory, ready for
    ``sample_browser_html(**browser_inputs(run))``.

    Control rows come from ``controls/*.jsonl``; the blind control and the seed re-runs are read from
    ``controls/`` when there, else from their stage logs (``stages/control_blind.jsonl``,
    ``stages/control_seed<N>.jsonl``).
    """
    from nlalab.rundir.io import read_json, read_jsonl
    from nlalab.rundir.layout import RunLayout

    lay = RunLayout(Path(run_dir))
    if not lay.samples.is_file():
        raise UsageError(f"{lay.samples}: not found. Fix: pass a finished run directory (nlalab run ... --out DIR).")
    samples = read_jsonl(lay.samples)
    categories: list = []
    if lay.results.is_file():
        categories = list(read_json(lay.results).get("categories") or [])
    raw: dict[str, list[dict]] = {}
    if lay.controls.is_dir():
        for p in sorted(lay.controls.glob("*.jsonl")):
            raw[p.stem] = read_jsonl(p)
    if lay.stages.is_dir():
        for p in sorted(lay.stages.glob("control_*.jsonl")):
            name = p.stem[len("control_"):]
            if (name == "blind" or re.fullmatch(r"seed\d+", name)) and name not in raw:
                raw[name] = read_jsonl(p)
    return {"samples": samples, "categories": categories, "controls": controls_by_item(samples, raw)}


# ------------------------------------------------------------------------------------------ page parts

_TEMPLATE_HEAD = """<section class="nb" id="{sid}" {label}>
<style>{css}</style>
{heading}
<p class="nb-note">Every sample of the run. Click a column header to sort (again to reverse; n/a always last), \
filter by category or flag, search prompt and explanation text. <mark>Marked</mark> words are prompt content \
words found in the explanation: the words keyword recall counts. Click a row (or its item) for the item view: \
its samples beside what each control wrote for it.</p>
<div class="nb-controls">
<label>Category <select class="nb-cat"></select></label>
<label>Flag <select class="nb-flag"></select></label>
<label>Search <input class="nb-q" type="search" placeholder="words in prompt or explanation"></label>
<label>Rows per page <select class="nb-size"></select></label>
</div>
<p class="nb-status" role="status" aria-live="polite"></p>
<div class="nb-item" role="region" aria-label="Item view" hidden></div>
<div class="nb-wrap"><table class="nb-t"><thead><tr></tr></thead><tbody></tbody></table></div>
<div class="nb-pager"><button type="button" class="nb-prev">&larr; Previous</button> <span class="nb-pageinfo">\
</span> <button type="button" class="nb-next">Next &rarr;</button></div>
"""

_CSS = """
.nb { --nb-line:#d9d9de; --nb-muted:#666; --nb-accent:#1f5fa8; }
.nb .nb-note { color: var(--nb-muted); font-size: 12px; max-width: 1100px; }
.nb .nb-controls { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center; font-size: 13px; margin: 8px 0; }
.nb .nb-controls input[type=search] { width: 22em; }
.nb .nb-status { font-size: 12.5px; color: var(--nb-muted); margin: 4px 0; }
.nb .nb-wrap { overflow-x: auto; }
.nb table.nb-t { border-collapse: collapse; font-size: 12.5px; width: 100%; }
.nb .nb-t th, .nb .nb-t td { border: 1px solid var(--nb-line); padding: 3px 6px; text-align: left; vertical-align: top; }
.nb .nb-t th { background: #f3f4f7; position: sticky; top: 0; }
.nb .nb-t th button { all: unset; cursor: pointer; font-weight: 600; display: block; width: 100%; }
.nb .nb-t th button:focus-visible, .nb button.nb-open:focus-visible { outline: 2px solid var(--nb-accent); }
.nb .nb-t th[aria-sort=ascending] button::after { content: " \\25B2"; }
.nb .nb-t th[aria-sort=descending] button::after { content: " \\25BC"; }
.nb .nb-t tbody tr { cursor: pointer; }
.nb .nb-t tbody tr:hover td { background: #eef3fb; }
.nb .nb-t tbody tr.nb-sel td { background: #dde8f7; }
.nb .nb-t td.c-item, .nb .nb-t td.c-category { white-space: nowrap; }
.nb .nb-t td.nb-num { font-variant-numeric: tabular-nums; text-align: right; white-space: nowrap; }
.nb .nb-t td.nb-txt { white-space: pre-wrap; word-break: break-word; font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
.nb .nb-t td.c-prompt { min-width: 14em; max-width: 26em; } .nb .nb-t td.c-explanation { min-width: 20em; max-width: 44em; }
.nb button.nb-open { all: unset; cursor: pointer; color: var(--nb-accent); text-decoration: underline; }
.nb .nb-flag-b { display: inline-block; font-size: 11px; padding: 0 4px; margin: 1px; border-radius: 3px; background: #fff0d6; border: 1px solid #f0c070; }
.nb mark { background: #ffe27a; padding: 0; }
.nb .nb-na { color: var(--nb-muted); }
.nb .nb-pager { margin: 8px 0; font-size: 13px; }
.nb .nb-item { border: 1px solid var(--nb-line); border-radius: 6px; padding: 8px 12px; margin: 8px 0; background: #fbfbfd; }
.nb .nb-item .nb-close { float: right; }
.nb .nb-item h3 { margin: 2px 0 6px; font-size: 15px; }
.nb .nb-cols { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 10px; }
.nb .nb-col h4 { margin: 4px 0; font-size: 13px; }
.nb .nb-card { border: 1px solid var(--nb-line); border-radius: 4px; padding: 4px 8px; margin: 4px 0; background: #fff; }
.nb .nb-card .nb-meta { font-size: 11.5px; color: var(--nb-muted); }
.nb .nb-card .nb-text { white-space: pre-wrap; word-break: break-word; font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
"""

_JS = r"""
(function () {
  "use strict";
  var root = document.currentScript.parentElement;
  var D = JSON.parse(root.querySelector("script.nb-data").textContent);
  var cols = D.cols, items = D.items, rows = D.rows, NC = 4;
  var flagNames = D.flags, cats = D.cats;
  var $ = function (s) { return root.querySelector(s); };
  var el = function (tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  };
  var COLS = [{key: "item", label: "item"}, {key: "category", label: "category"}, {key: "prompt", label: "prompt"},
              {key: "explanation", label: "explanation"}];
  cols.forEach(function (c, j) { COLS.push({key: c, label: c, num: j}); });
  COLS.push({key: "flags", label: "flags"});

  var wordSets = items.map(function (it) { var s = Object.create(null); it[3].forEach(function (w) { s[w] = 1; }); return s; });
  var hay = null;  // lower-cased prompt + explanation, built on the first search
  var lowerText = {};  // sort keys for text columns, built on first use
  var nflags = rows.map(function (r) { var b = r[3], n = 0; while (b) { n += b & 1; b >>= 1; } return n; });

  var state = {sort: null, dir: 1, cat: -1, flag: "", q: "", page: 0, size: D.page, sel: -1};
  var order = [];

  // ---- text with marks: tokens are [A-Za-z0-9]+, as the keyword scorer cuts them
  var TOK = /[A-Za-z0-9]+/g;
  function found(words, text) {
    var f = Object.create(null), m; TOK.lastIndex = 0;
    while ((m = TOK.exec(text)) !== null) { var t = m[0].toLowerCase(); if (words[t]) f[t] = 1; }
    return f;
  }
  function marked(parent, text, words) {
    var last = 0, m; TOK.lastIndex = 0;
    while ((m = TOK.exec(text)) !== null) {
      if (words[m[0].toLowerCase()]) {
        if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
        parent.appendChild(el("mark", null, m[0]));
        last = m.index + m[0].length;
      }
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
    return parent;
  }
  function fmt(v) { return v === null ? "n/a" : v.toFixed(3); }
  function flagBadges(parent, bits) {
    for (var j = 0; j < flagNames.length; j++)
      if (bits & (1 << j)) parent.appendChild(el("span", "nb-flag-b", flagNames[j]));
    return parent;
  }

  // ---- filtering and sorting: on an index array, never the DOM
  function keyText(k) {
    if (!lowerText[k]) {
      lowerText[k] = rows.map(function (r) {
        return (k === "prompt" ? items[r[0]][2] : k === "category" ? cats[items[r[0]][1]] : r[2]).toLowerCase();
      });
    }
    return lowerText[k];
  }
  function compute() {
    var q = state.q.trim().toLowerCase(), fl = state.flag, cat = state.cat, out = [];
    if (q && !hay) hay = rows.map(function (r) { return (items[r[0]][2] + "\n" + r[2]).toLowerCase(); });
    var fbit = fl && fl !== "any" && fl !== "none" ? (1 << flagNames.indexOf(fl)) : 0;
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      if (cat >= 0 && items[r[0]][1] !== cat) continue;
      if (fl === "any" && !r[3]) continue;
      if (fl === "none" && r[3]) continue;
      if (fbit && !(r[3] & fbit)) continue;
      if (q && hay[i].indexOf(q) < 0) continue;
      out.push(i);
    }
    var s = state.sort, d = state.dir;
    if (s) {
      var c = COLS.filter(function (x) { return x.key === s; })[0], cmp;
      if (c.num !== undefined) {
        var p = NC + c.num;
        cmp = function (a, b) {
          var x = rows[a][p], y = rows[b][p];
          if (x === null || y === null) return x === y ? a - b : (x === null ? 1 : -1);
          return x < y ? -d : x > y ? d : a - b;
        };
      } else if (s === "item") {
        cmp = function (a, b) { var x = rows[a], y = rows[b]; return d * (x[0] - y[0] || x[1] - y[1]) || a - b; };
      } else if (s === "flags") {
        cmp = function (a, b) { return d * (nflags[a] - nflags[b] || rows[a][3] - rows[b][3]) || a - b; };
      } else {
        var t = keyText(s);
        cmp = function (a, b) { var x = t[a], y = t[b]; return x < y ? -d : x > y ? d : a - b; };
      }
      out.sort(cmp);
    }
    order = out;
  }

  // ---- rendering: one page of rows
  var thead = $("thead tr"), tbody = $("tbody");
  function renderHead() {
    thead.textContent = "";
    COLS.forEach(function (c) {
      var th = el("th"); th.setAttribute("scope", "col"); th.dataset.key = c.key;
      th.setAttribute("aria-sort", state.sort === c.key ? (state.dir > 0 ? "ascending" : "descending") : "none");
      var b = el("button", null, c.label); b.type = "button";
      b.title = "Sort by " + c.label + (c.num !== undefined ? " (n/a last)" : "");
      b.addEventListener("click", function () {
        if (state.sort === c.key) state.dir = -state.dir; else { state.sort = c.key; state.dir = 1; }
        state.page = 0; update();
      });
      th.appendChild(b); thead.appendChild(th);
    });
  }
  function renderBody() {
    var n = order.length, pages = Math.max(1, Math.ceil(n / state.size));
    if (state.page >= pages) state.page = pages - 1;
    var start = state.page * state.size, end = Math.min(n, start + state.size);
    var frag = document.createDocumentFragment();
    for (var k = start; k < end; k++) {
      var i = order[k], r = rows[i], it = items[r[0]], words = wordSets[r[0]];
      var tr = el("tr"); tr.dataset.row = i; if (i === state.sel) tr.className = "nb-sel";
      var td = el("td", "c-item"), b = el("button", "nb-open", it[0] + " #" + r[1]); b.type = "button";
      b.title = "Open the item view"; td.appendChild(b); tr.appendChild(td);
      tr.appendChild(el("td", "c-category", cats[it[1]]));
      var f = found(words, r[2]);
      tr.appendChild(marked(el("td", "nb-txt c-prompt"), it[2], f));
      tr.appendChild(marked(el("td", "nb-txt c-explanation"), r[2], words));
      for (var j = 0; j < cols.length; j++) {
        var v = r[NC + j], c = el("td", "nb-num c-" + cols[j] + (v === null ? " nb-na" : ""), fmt(v));
        if (v !== null) c.title = String(v);
        tr.appendChild(c);
      }
      tr.appendChild(flagBadges(el("td", "c-flags"), r[3]));
      frag.appendChild(tr);
    }
    tbody.textContent = ""; tbody.appendChild(frag);
    $(".nb-status").textContent = (n ? "Showing " + (start + 1).toLocaleString("en-US") + "\u2013" +
      end.toLocaleString("en-US") + " of " : "Showing 0 of ") + n.toLocaleString("en-US") +
      " matching rows (" + rows.length.toLocaleString("en-US") + " total)";
    $(".nb-pageinfo").textContent = "page " + (state.page + 1) + " of " + pages;
    $(".nb-prev").disabled = state.page === 0;
    $(".nb-next").disabled = state.page >= pages - 1;
  }
  function update() { compute(); renderHead(); renderBody(); }

  // ---- item view: the item's K samples beside each control's explanations for it
  function card(meta, text, words, bits) {
    var c = el("div", "nb-card"); c.appendChild(el("div", "nb-meta", meta));
    if (bits) flagBadges(c.firstChild, bits);
    c.appendChild(marked(el("div", "nb-text"), text, words)); return c;
  }
  var ctrlByItem = {};
  Object.keys(D.controls).forEach(function (name) {
    var m = ctrlByItem[name] = {};
    D.controls[name].forEach(function (r) { (m[r[0]] = m[r[0]] || []).push(r); });
  });
  function showItem(rowIndex) {
    state.sel = rowIndex;
    var ix = rows[rowIndex][0], it = items[ix], words = wordSets[ix], box = $(".nb-item");
    box.textContent = ""; box.hidden = false; box.dataset.item = it[0];
    var x = el("button", "nb-close", "Close item view");
    x.type = "button"; x.addEventListener("click", function () { box.hidden = true; state.sel = -1; renderBody(); });
    box.appendChild(x); box.appendChild(el("h3", null, "Item " + it[0] + " \u00b7 " + cats[it[1]]));
    var p = el("div", "nb-card nb-prompt"); p.appendChild(el("div", "nb-meta", "prompt (content words: " +
      (it[3].length ? it[3].join(", ") : "none") + ")"));
    p.appendChild(el("div", "nb-text", it[2])); box.appendChild(p);
    var grid = el("div", "nb-cols"), own = el("div", "nb-col"); own.dataset.col = "samples";
    var mine = [];
    for (var i = 0; i < rows.length; i++) if (rows[i][0] === ix) mine.push(i);
    mine.sort(function (a, b) { return rows[a][1] - rows[b][1] || a - b; });
    own.appendChild(el("h4", null, "This pair: " + mine.length + " sample" + (mine.length === 1 ? "" : "s")));
    mine.forEach(function (i) {
      var r = rows[i], meta = "sample " + r[1] + cols.map(function (c, j) { return " \u00b7 " + c + " " + fmt(r[NC + j]); }).join("") + " ";
      var c = card(meta, r[2], words, r[3]); c.classList.add("nb-sample"); if (i === rowIndex) c.classList.add("nb-cur");
      own.appendChild(c);
    });
    grid.appendChild(own);
    Object.keys(ctrlByItem).forEach(function (name) {
      var col = el("div", "nb-col"), list = ctrlByItem[name][ix] || []; col.dataset.col = name;
      col.appendChild(el("h4", null, name + ": " + list.length + " row" + (list.length === 1 ? "" : "s")));
      if (!list.length) col.appendChild(el("p", "nb-na", "(no rows for this item)"));
      list.forEach(function (r) { col.appendChild(card(r[1] === null ? name : "sample " + r[1], r[2], words, 0)); });
      grid.appendChild(col);
    });
    box.appendChild(grid);
    renderBody();
    if (box.scrollIntoView) box.scrollIntoView({block: "nearest"});
  }
  tbody.addEventListener("click", function (ev) {
    var tr = ev.target.closest("tr");
    if (tr && tr.dataset.row !== undefined) showItem(+tr.dataset.row);
  });

  // ---- controls
  var sc = $(".nb-cat"); sc.appendChild(new Option("all categories", "-1"));
  cats.forEach(function (c, j) { sc.appendChild(new Option(c, String(j))); });
  sc.addEventListener("change", function () { state.cat = +sc.value; state.page = 0; update(); });
  var sf = $(".nb-flag"); sf.appendChild(new Option("all rows", "")); sf.appendChild(new Option("any flag", "any"));
  sf.appendChild(new Option("no flag", "none"));
  flagNames.forEach(function (f) { sf.appendChild(new Option(f, f)); });
  sf.addEventListener("change", function () { state.flag = sf.value; state.page = 0; update(); });
  var sq = $(".nb-q"), timer = null;
  sq.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { state.q = sq.value; state.page = 0; update(); }, 120);
  });
  sq.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter") { clearTimeout(timer); state.q = sq.value; state.page = 0; update(); }
  });
  var ss = $(".nb-size");
  D.pageSizes.forEach(function (n) { var o = new Option(String(n), String(n)); o.selected = n === D.page; ss.appendChild(o); });
  ss.addEventListener("change", function () { state.size = +ss.value; state.page = 0; renderBody(); });
  $(".nb-prev").addEventListener("click", function () { if (state.page > 0) { state.page--; renderBody(); } });
  $(".nb-next").addEventListener("click", function () { state.page++; renderBody(); });
  update();
  root.dataset.ready = "1";
})();
"""
