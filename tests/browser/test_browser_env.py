"""The browser-test harness itself: which Chromium it picks, and that it skips or fails as documented."""

from __future__ import annotations

import pytest

from browserenv import BrowserUnavailable, chromium_path, launch, unavailable


def test_chromium_path_honours_the_override(monkeypatch, tmp_path):
    exe = tmp_path / "chrome"
    exe.write_text("")
    monkeypatch.setenv("NLALAB_CHROMIUM", str(exe))
    assert chromium_path() == str(exe)
    monkeypatch.setenv("NLALAB_CHROMIUM", str(tmp_path / "missing"))
    assert chromium_path() is None


def test_unavailable_skips_or_fails_by_environment(monkeypatch):
    monkeypatch.delenv("NLALAB_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium found"):
        unavailable("no Chromium found")
    monkeypatch.setenv("NLALAB_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match=r"no Chromium found \(NLALAB_REQUIRE_BROWSER=1"):
        unavailable("no Chromium found")


def test_launch_says_why_it_cannot(monkeypatch, tmp_path):
    monkeypatch.setenv("NLALAB_CHROMIUM", str(tmp_path / "missing"))
    with pytest.raises(BrowserUnavailable, match=r"NLALAB_CHROMIUM=.*missing does not exist: install it with"):
        launch(None)
    sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    fake = tmp_path / "not-a-browser"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("NLALAB_CHROMIUM", str(fake))
    pw = sync.sync_playwright().start()
    try:
        with pytest.raises(BrowserUnavailable, match=rf"Chromium at {fake} did not launch: \S"):
            launch(pw, timeout_ms=10_000)
    finally:
        pw.stop()
