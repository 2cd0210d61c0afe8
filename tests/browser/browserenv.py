"""Finding and launching the system Chromium for the browser tests (a plain module, shared by conftest).

Playwright's own browser download is not reachable from the project's machines, so the tests drive the
system browser (Debian's ``chromium``) by ``executable_path`` and never call ``playwright install``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_HINT = "install it with `apt-get install -y chromium` (.ci/run does) or set NLALAB_CHROMIUM=/path/to/chrome"


class BrowserUnavailable(Exception):
    """No browser can be launched here; the message says why and how to get one."""


def chromium_path() -> str | None:
    """``$NLALAB_CHROMIUM`` (None when that file does not exist), else the first Chromium on PATH, else
    Debian's ``/usr/bin/chromium``."""
    env = os.environ.get("NLALAB_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def launch(pw, timeout_ms: int = 30_000):
    """A headless Chromium from a started sync Playwright, or :class:`BrowserUnavailable`."""
    exe = chromium_path()
    if exe is None:
        where = f"NLALAB_CHROMIUM={os.environ['NLALAB_CHROMIUM']} does not exist" if os.environ.get(
            "NLALAB_CHROMIUM") else "no Chromium found"
        raise BrowserUnavailable(f"{where}: {INSTALL_HINT}")
    try:
        return pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=timeout_ms)
    except Exception as e:  # playwright raises its own Error type, holding the browser's stderr
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise BrowserUnavailable(f"Chromium at {exe} did not launch: {first}") from None


def unavailable(reason: str):
    """Skip, saying why; fail instead under ``NLALAB_REQUIRE_BROWSER=1`` (CI, where chromium is installed)."""
    if os.environ.get("NLALAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (NLALAB_REQUIRE_BROWSER=1: the browser tests must run here)", pytrace=False)
    pytest.skip(reason)
