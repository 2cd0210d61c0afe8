"""The sample browser in a real headless Chromium: sort, filters, search, marks, item view, speed.

Each test opens the page by file:// URL (no server, no network: the page fixture fails on any request
that leaves file://) and compares the rendered rows with answers computed here from the same rows.
Screenshots are kept as test artefacts (see conftest).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest

from nlalab.report.browser import browser_inputs, display_text, sample_browser_html
from nlalab.scorers.keyword import TOKEN_RE, content_words
from samplesets import HOSTILE, synthetic_run

pytestmark = pytest.mark.browser

SEL = "#samples"


def _page_html(*sections: str) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>samples</title></head><body>"
            + "".join(sections) + "</body></html>")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    run = synthetic_run()
    path = tmp_path_factory.mktemp("browser") / "synthetic.html"
    path.write_text(_page_html(sample_browser_html(**run)), encoding="utf-8")
    return run, path


def _open(page, path: Path, sel: str = SEL) -> float:
    t = time.perf_counter()
    page.goto(path.as_uri())
    page.wait_for_selector(f"{sel}[data-ready='1']", timeout=15_000)
    return time.perf_counter() - t


def _rows(page, sel: str = SEL) -> list[int]:
    return page.eval_on_selector_all(f"{sel} tbody tr", "trs => trs.map(tr => +tr.dataset.row)")


def _cells(page, cls: str, sel: str = SEL) -> list[str]:
    return page.eval_on_selector_all(f"{sel} tbody td.{cls}", "tds => tds.map(td => td.textContent)")


def _status(page, sel: str = SEL) -> str:
    return page.text_content(f"{sel} .nb-status")


def _sort(page, key: str, sel: str = SEL) -> None:
    page.click(f"{sel} th[data-key='{key}'] button")


def _search(page, text: str, sel: str = SEL) -> None:
    page.fill(f"{sel} .nb-q", text)
    page.press(f"{sel} .nb-q", "Enter")


def _shot(page, artifacts_dir: Path, name: str) -> None:
    page.screenshot(path=str(artifacts_dir / f"{name}.png"), full_page=False)
    assert (artifacts_dir / f"{name}.png").stat().st_size > 1000


def _numeric_order(samples, key, descending=False):
    """Rows sorted by ``key`` with ties by row index and n/a (None, NaN) last in both directions."""
    def val(i):
        v = samples[i][key]
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    have = [i for i in range(len(samples)) if val(i) is not None]
    have.sort(key=lambda i: (-val(i) if descending else val(i), i))
    return have + [i for i in range(len(samples)) if val(i) is None]


def test_renders_first_page_fast_and_sorts_numbers_with_na_last(page, synth, artifacts_dir):
    run, path = synth
    samples = run["samples"]
    load_s = _open(page, path)
    assert load_s < 10, f"5,000 rows took {load_s:.1f} s to render"
    assert _status(page) == "Showing 1\u2013100 of 5,000 matching rows (5,000 total)"
    assert _rows(page) == list(range(100))
    assert page.get_attribute(f"{SEL} th[data-key='fve_nrm']", "aria-sort") == "none"
    _shot(page, artifacts_dir, "synthetic_initial")

    # sorting 5,000 rows and re-rendering the page is one synchronous click handler: time it in the page
    ms = page.evaluate("""() => { const b = document.querySelector("#samples th[data-key='fve_nrm'] button");
                                  const t = performance.now(); b.click(); return performance.now() - t; }""")
    assert ms < 500, f"sort + render took {ms:.0f} ms"
    asc = _numeric_order(samples, "fve_nrm")
    assert _rows(page) == asc[:100]
    assert page.get_attribute(f"{SEL} th[data-key='fve_nrm']", "aria-sort") == "ascending"
    assert _cells(page, "c-fve_nrm")[0] == f"{samples[asc[0]]['fve_nrm']:.3f}"
    _sort(page, "fve_nrm")
    desc = _numeric_order(samples, "fve_nrm", descending=True)
    assert _rows(page) == desc[:100]
    assert page.get_attribute(f"{SEL} th[data-key='fve_nrm']", "aria-sort") == "descending"
    _shot(page, artifacts_dir, "synthetic_sorted_fve_desc")
    # the last page ends with the NaN rows, shown as n/a, in both directions
    page.select_option(f"{SEL} .nb-size", "1000")
    for _ in range(4):
        page.click(f"{SEL} .nb-next")
    assert page.is_disabled(f"{SEL} .nb-next")
    n_na = sum(1 for r in samples if math.isnan(r["fve_nrm"]))
    assert n_na == 57
    assert _rows(page) == desc[4000:]
    assert _cells(page, "c-fve_nrm")[-n_na:] == ["n/a"] * n_na
    assert page.get_attribute(f"{SEL} th[data-key='cos']", "aria-sort") == "none"


def test_text_and_item_columns_sort(page, synth):
    run, path = synth
    samples = run["samples"]
    _open(page, path)
    _sort(page, "explanation")
    want = sorted(range(len(samples)), key=lambda i: (display_text(samples[i]["explanation"]).lower(), i))
    assert _rows(page) == want[:100]
    _sort(page, "item")
    _sort(page, "item")  # descending: last item first, its samples from the last
    assert _rows(page)[:6] == [4999, 4998, 4997, 4996, 4995, 4994]
    _sort(page, "flags")
    _sort(page, "flags")  # most flags first
    top = _rows(page)[0]
    assert sum(samples[top][f] for f in ("truncated", "missing_close_tag", "empty", "cjk_smell")) == 3


def test_category_flag_and_search_filters_combine(page, synth, artifacts_dir):
    run, path = synth
    samples = run["samples"]
    _open(page, path)
    page.select_option(f"{SEL} .nb-cat", label="agent")
    assert _status(page) == "Showing 1\u2013100 of 1,250 matching rows (5,000 total)"
    assert set(_cells(page, "c-category")) == {"agent"}
    assert _rows(page) == [i for i, r in enumerate(samples) if r["category"] == "agent"][:100]

    page.select_option(f"{SEL} .nb-flag", "empty")
    want = [i for i, r in enumerate(samples) if r["category"] == "agent" and r["empty"]]
    assert _rows(page) == want and want
    assert all("empty" in f for f in _cells(page, "c-flags"))

    page.select_option(f"{SEL} .nb-cat", "-1")
    page.select_option(f"{SEL} .nb-flag", "none")
    want = [i for i, r in enumerate(samples)
            if not any(r[f] for f in ("truncated", "missing_close_tag", "empty", "cjk_smell"))]
    assert _status(page) == f"Showing 1\u2013100 of {len(want):,} matching rows (5,000 total)"
    assert _rows(page) == want[:100] and set(_cells(page, "c-flags")) == {""}

    page.select_option(f"{SEL} .nb-flag", "")
    _search(page, "ZEBRA")  # case-insensitive, in the explanation
    assert _rows(page) == [i for i in range(5000) if i % 700 == 5] == [5, 705, 1405, 2105, 2805, 3505, 4205, 4905]
    _search(page, "unicorn")  # in the prompt: all samples of item 123
    assert _rows(page) == list(range(615, 620))
    _shot(page, artifacts_dir, "synthetic_search_unicorn")
    _search(page, "no such text anywhere")
    assert _rows(page) == [] and _status(page) == "Showing 0 of 0 matching rows (5,000 total)"
    _search(page, "")
    assert len(_rows(page)) == 100


def test_marks_are_exactly_the_words_recall_counts(page, synth):
    run, path = synth
    samples = run["samples"]
    _open(page, path)
    page.select_option(f"{SEL} .nb-size", "250")
    got = page.eval_on_selector_all(
        f"{SEL} tbody tr",
        """trs => trs.map(tr => [+tr.dataset.row,
             [...tr.querySelectorAll('td.c-explanation mark')].map(m => m.textContent),
             [...tr.querySelectorAll('td.c-prompt mark')].map(m => m.textContent)])""")
    assert len(got) == 250
    n_marked = 0
    for i, expl_marks, prompt_marks in got:
        r = samples[i]
        p_words = content_words(r["prompt"])
        assert {m.lower() for m in expl_marks} <= p_words
        # recall = |P ∩ E| / |P|: the distinct marked words are that intersection
        assert len({m.lower() for m in expl_marks}) / len(p_words) == pytest.approx(r["recall"]), i
        assert {m.lower() for m in prompt_marks} == {m.lower() for m in expl_marks}, i
        n_marked += bool(expl_marks)
    assert n_marked > 100  # the synthetic explanations share words with their prompts often
    # matching ignores case but the mark keeps the word as written
    assert any(m[0].isupper() for _, ms, _ in got for m in ms)


def test_hostile_text_is_shown_not_run(page, synth):
    run, path = synth
    _open(page, path)
    _search(page, "onerror")
    assert _rows(page) == [35]  # item 7, sample 0
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator(f"{SEL} tbody img, {SEL} tbody b").count() == 0
    assert _cells(page, "c-explanation") == [HOSTILE[0]]
    p_words = content_words(run["samples"][35]["prompt"])
    want = [t for t in TOKEN_RE.findall(HOSTILE[0]) if t.lower() in p_words]
    got = page.eval_on_selector_all(f"{SEL} tbody td.c-explanation mark", "ms => ms.map(m => m.textContent)")
    assert got == want and want[0] == "explain"  # every prompt says "Explain ..."
    _search(page, "surrogate")
    assert _rows(page) == [36]
    shown = _cells(page, "c-explanation")[0]
    assert shown == display_text(HOSTILE[1]) and "\ufffd" in shown and "\u241b" in shown and "\u2028" in shown


def test_item_view_shows_the_k_samples_and_controls_side_by_side(page, synth, artifacts_dir):
    run, path = synth
    _open(page, path)
    assert page.is_hidden(f"{SEL} .nb-item")
    _sort(page, "cos")
    first = _rows(page)[2]
    item = first // 5
    page.click(f"{SEL} tbody tr[data-row='{first}'] td.c-explanation")
    box = f"{SEL} .nb-item"
    assert page.is_visible(box)
    assert page.get_attribute(box, "data-item") == f"it-{item:04d}"
    assert "nb-sel" in page.get_attribute(f"{SEL} tbody tr[data-row='{first}']", "class")
    texts = page.eval_on_selector_all(f"{box} [data-col=samples] .nb-sample .nb-text", "e => e.map(x => x.textContent)")
    assert texts == [display_text(run["samples"][item * 5 + s]["explanation"]) for s in range(5)]
    assert page.locator(f"{box} [data-col=samples] .nb-cur").count() == 1
    cols = page.eval_on_selector_all(f"{box} .nb-col", "e => e.map(x => x.dataset.col)")
    assert cols == ["samples", "blind", "random_gaussian"]
    blind = page.eval_on_selector_all(f"{box} [data-col=blind] .nb-text", "e => e.map(x => x.textContent)")
    assert blind == [r["explanation"] for r in run["controls"]["blind"] if r["item_id"] == f"it-{item:04d}"]
    rg = page.eval_on_selector_all(f"{box} [data-col=random_gaussian] .nb-text", "e => e.map(x => x.textContent)")
    assert rg == [r["explanation"] for r in run["controls"]["random_gaussian"] if r["item_id"] == f"it-{item:04d}"]
    if item % 10:
        assert page.text_content(f"{box} [data-col=random_gaussian] p") == "(no rows for this item)"
    _shot(page, artifacts_dir, "synthetic_item_view")
    # keyboard: the item cell is a button; Enter on it opens that row's item
    page.focus(f"{SEL} tbody tr[data-row='{_rows(page)[0]}'] button.nb-open")
    page.keyboard.press("Enter")
    assert page.get_attribute(box, "data-item") == f"it-{_rows(page)[0] // 5:04d}"
    page.click(f"{box} .nb-close")
    assert page.is_hidden(box)


def test_two_browsers_on_one_page_stay_independent(page, tmp_path):
    a = synthetic_run(n_items=10, k=2, seed=1)
    b = synthetic_run(n_items=30, k=3, seed=2)
    path = tmp_path / "two.html"
    path.write_text(_page_html(sample_browser_html(**a, section_id="sa", page_size=50),
                               sample_browser_html(**b, section_id="sb", page_size=50)), encoding="utf-8")
    _open(page, path, "#sa")
    page.wait_for_selector("#sb[data-ready='1']")
    page.select_option("#sa .nb-cat", label="code")
    assert _rows(page, "#sa") == [i for i, r in enumerate(a["samples"]) if r["category"] == "code"]
    assert _rows(page, "#sb") == list(range(50))
    assert _status(page, "#sb") == "Showing 1\u201350 of 90 matching rows (90 total)"


# ------------------------------------------------------------------------------------------ a real run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A fixture-pair run of the whole pipeline (~10 s): the rows and control files the report really reads."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
    try:
        from runhelpers import cfg_for
    finally:
        sys.path.pop(0)
    from nlalab.study.pipeline import run_study
    from nlalab.testing import build_fixture_pair

    root = tmp_path_factory.mktemp("browser_real")
    pair = build_fixture_pair(root / "pair", "qwen2")
    run_study(cfg_for(pair, root / "run", controls=["random_gaussian", "directions", "blind"],
                      limit_per_category=2))
    return root / "run"


def test_real_fixture_run(page, real_run, artifacts_dir):
    inp = browser_inputs(real_run)
    samples = inp["samples"]
    assert sorted(inp["controls"]) == ["blind", "random_gaussian"]  # directions: one vector per category
    path = real_run / "browser.html"
    path.write_text(_page_html(sample_browser_html(**inp)), encoding="utf-8")
    _open(page, path)
    assert _rows(page) == list(range(len(samples))) and len(samples) == 16  # 4 categories x 2 items x K=2
    assert _cells(page, "c-explanation") == [display_text(r["explanation"]) for r in samples]
    # marks agree with the recall the pipeline stored, row by row
    marks = page.eval_on_selector_all(f"{SEL} tbody tr", """trs => trs.map(tr =>
        [...tr.querySelectorAll('td.c-explanation mark')].map(m => m.textContent.toLowerCase()))""")
    for r, m in zip(samples, marks):
        p = content_words(r["prompt"])
        if r["recall"] is None or (isinstance(r["recall"], float) and math.isnan(r["recall"])):
            assert not p and not m
        else:
            assert len(set(m)) / len(p) == pytest.approx(r["recall"])
    _sort(page, "cos")
    _sort(page, "cos")
    assert _rows(page)[0] == max(range(len(samples)), key=lambda i: samples[i]["cos"])
    page.select_option(f"{SEL} .nb-cat", label="code")
    assert set(_cells(page, "c-category")) == {"code"} and len(_rows(page)) == 4
    page.select_option(f"{SEL} .nb-cat", "-1")
    # item view of the first item: its K=2 samples, then each control's rows for it
    page.click(f"{SEL} tbody tr[data-row='0'] td.c-prompt")
    box = f"{SEL} .nb-item"
    first = samples[0]["item_id"]
    assert page.get_attribute(box, "data-item") == first
    assert page.locator(f"{box} [data-col=samples] .nb-sample").count() == 2
    for name, rows in inp["controls"].items():
        want = [display_text(r["explanation"]) for r in rows if r["item_id"] == first]
        got = page.eval_on_selector_all(f"{box} [data-col='{name}'] .nb-text", "e => e.map(x => x.textContent)")
        assert got == want, name
    assert len(page.eval_on_selector_all(f"{box} [data-col=blind] .nb-text", "e => e")) == 2
    _shot(page, artifacts_dir, "real_fixture_item_view")
