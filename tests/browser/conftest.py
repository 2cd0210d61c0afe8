"""Playwright in the system Chromium, for tests of the HTML the report ships (helpers: browserenv.py).

Where no browser can be launched the browser tests skip, saying why; with ``NLALAB_REQUIRE_BROWSER=1``
(set by ``.ci/run`` once chromium is installed) they fail instead, so CI cannot pass without having
rendered the pages. Screenshots go to ``$NLALAB_TEST_ARTIFACTS`` (default ``tests/browser/artifacts/``,
git-ignored).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from browserenv import BrowserUnavailable, launch, unavailable


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    d = Path(os.environ.get("NLALAB_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def chromium():
    """A headless system Chromium, one per test module (the sync API's event loop stays inside it)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install -e '.[test]' (scripts/setup.sh does)")
    pw = sync_playwright().start()
    try:
        browser = launch(pw)
    except BrowserUnavailable as e:
        pw.stop()
        unavailable(str(e))
    yield browser
    browser.close()
    pw.stop()


@pytest.fixture
def page(chromium):
    """A fresh page; the test fails on a console error, an uncaught exception or any request that
    leaves file:// (the pages must be self-contained)."""
    ctx = chromium.new_context(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    ctx.route(lambda url: not url.startswith(("file:", "data:", "about:")),
              lambda route: (errors.append(f"network request: {route.request.url}"), route.abort()))
    pg = ctx.new_page()
    pg.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    pg.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    yield pg
    ctx.close()
    assert not errors, f"the page reported errors: {errors}"
