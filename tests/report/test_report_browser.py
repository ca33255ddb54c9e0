"""The HTML report in a real browser: headless Chromium over the DevTools protocol.

Checks that the page loads from disk with no console error, no exception, no
Content-Security-Policy violation and no resource fetched; that the findings and the
plots are there; and saves screenshots as test artefacts (``artifacts/report.png``,
the whole page; ``artifacts/report-top.png``, the first screenful). With
``GOLDENHOUR_UPDATE_SCREENSHOT=1`` the top one is also copied to
``docs/report-screenshot.png`` (docs/report.md's picture).
"""
from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from tests.report.cdp import CHROMIUM, Browser

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (scripts/setup-host.sh "
                                                                   "installs it for tests)")


@pytest.fixture(scope="module")
def page(incident, tmp_path_factory):
    work = tmp_path_factory.mktemp("browser")
    out = work / "report.html"
    # a short window: kernel messages of earlier test runs still in this machine's ring buffer become context
    cp = incident.gh("report", "--incident", incident.id, "--out", str(out), "--window", "1")
    assert cp.returncode == 0, cp.stderr
    b = Browser(str(work / "profile"), width=1280, height=1000)
    try:
        for domain in ("Page", "Runtime", "Log"):
            b.call(f"{domain}.enable")
        b.call("Page.navigate", {"url": out.as_uri()})
        b.wait_event("Page.loadEventFired")
        yield b
    finally:
        b.close()


def test_page_loads_without_console_errors_or_fetches(page):
    assert page.evaluate("document.readyState") == "complete"
    assert page.problems() == []
    assert page.evaluate("performance.getEntriesByType('resource').length") == 0
    assert page.evaluate("document.scripts.length") == 0


def test_findings_are_shown_with_their_evidence(page, incident):
    titles = page.evaluate("[...document.querySelectorAll('article.finding h3')].map(h => h.textContent)")
    assert f"OOM killer killed {incident.oom_comm} (pid {incident.oom_pid})" in titles
    assert any(t.startswith(f"Accept queue full on tcp 127.0.0.1:{incident.listen_port} ") for t in titles)
    if not incident.conntrack_skip:
        assert any(t.startswith("Conntrack table full") for t in titles)
    # critical findings come first and show their evidence open; what is "also on this host" (older than the
    # incident, or about other processes' cgroups) comes after, folded
    arts = page.evaluate("[...document.querySelectorAll('article.finding')].map(a => [a.className, a.dataset.scope, "
                         "!!a.closest('details.also')])")
    main = [0 if "critical" in c else 1 if "warning" in c else 2 for c, scope, _ in arts if scope != "elsewhere"]
    assert main == sorted(main)
    scopes = [scope == "elsewhere" for _, scope, _ in arts]
    assert scopes == sorted(scopes) and all(folded == (scope == "elsewhere") for _, scope, folded in arts)
    first_open = page.evaluate("document.querySelector('article.finding.critical details').open")
    assert first_open is True
    ev = page.evaluate("document.querySelector('article.finding.critical details').innerText")
    assert "collectors/" in ev


def test_plots_are_inline_accessible_svg(page):
    n = page.evaluate("document.querySelectorAll('svg.plot').length")
    assert n >= 3                                  # timeline, pressure, sockets per process
    assert page.evaluate("!!document.querySelector('svg.timeline')")
    labelled = page.evaluate("[...document.querySelectorAll('svg.plot')].every(s => s.getAttribute('role') === 'img' "
                             "&& s.querySelector('title') && s.querySelector('desc') "
                             "&& s.getAttribute('aria-labelledby'))")
    assert labelled
    # the timeline draws the trigger and the capture window, the sockets plot names processes
    assert page.evaluate("document.querySelector('svg.timeline').textContent.includes('trigger')")
    widths = page.evaluate("[...document.querySelectorAll('svg.plot')].map(s => s.getBoundingClientRect().width)")
    assert all(w > 200 for w in widths)
    # nothing wider than the window: no horizontal scrolling
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_screenshot_is_saved_as_an_artefact(page):
    arts = ROOT / "artifacts"
    arts.mkdir(exist_ok=True)
    size = page.call("Page.getLayoutMetrics")["cssContentSize"]
    full = page.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                "clip": {"x": 0, "y": 0, "width": size["width"],
                                                         "height": min(size["height"], 16000), "scale": 1}})
    top = page.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                               "clip": {"x": 0, "y": 0, "width": 1280, "height": 1500, "scale": 1}})
    for name, shot in (("report.png", full), ("report-top.png", top)):
        data = base64.b64decode(shot["data"])
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
        (arts / name).write_bytes(data)
    if os.environ.get("GOLDENHOUR_UPDATE_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(arts / "report-top.png", ROOT / "docs" / "report-screenshot.png")
