"""Playwright in the system Chromium (Debian's ``chromium`` package), for tests of HTML the report ships.

Playwright's own browser download is not reachable from the project's machines, so the tests drive the
system browser by ``executable_path`` and never call ``playwright install``. Where no browser can be
launched the browser tests skip, saying why; with ``NLALAB_REQUIRE_BROWSER=1`` (set by ``.ci/run``) they fail
instead, so CI cannot pass without having rendered the pages.

Screenshots go to ``$NLALAB_TEST_ARTIFACTS`` (default ``tests/browser/artifacts/``, git-ignored).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_HINT = "install it with `apt-get install -y chromium` (.ci/run does) or set NLALAB_CHROMIUM=/path/to/chrome"


def chromium_path() -> str | None:
    """``$NLALAB_CHROMIUM``, else the first Chromium on PATH, else Debian's ``/usr/bin/chromium``."""
    env = os.environ.get("NLALAB_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def _unavailable(reason: str):
    if os.environ.get("NLALAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (NLALAB_REQUIRE_BROWSER=1: the browser tests must run here)", pytrace=False)
    pytest.skip(reason)


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
        _unavailable("playwright is not installed: pip install -e '.[test]' (scripts/setup.sh does)")
    exe = chromium_path()
    if exe is None:
        _unavailable(f"no Chromium found: {INSTALL_HINT}")
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=30_000)
    except Exception as e:  # playwright raises its own Error type with the browser's stderr
        pw.stop()
        _unavailable(f"Chromium at {exe} did not launch: {str(e).strip().splitlines()[0][:300]}")
    yield browser
    browser.close()
    pw.stop()


@pytest.fixture
def page(chromium):
    """A fresh page that records console errors and uncaught exceptions; the test fails on any."""
    ctx = chromium.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    # self-contained means no request leaves file://: any other request is refused and fails the test
    ctx.route(lambda url: not url.startswith(("file:", "data:", "about:")),
              lambda route: (errors.append(f"network request: {route.request.url}"), route.abort()))
    pg.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    pg.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    pg.js_errors = errors
    yield pg
    ctx.close()
    assert not errors, f"the page reported errors: {errors}"
