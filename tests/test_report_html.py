"""`maild report --html`: one self-contained page, rendered in headless Chromium, with its
charts drawn from the seeded dataset and a screenshot that is not blank."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Env, require
from maild.app import App
from test_reports import WEEK, app, seed  # noqa: F401 (app is a fixture)

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    found = next((path for name in CHROMIUM if (path := shutil.which(name))), None)
    if found is None:
        require("Chromium", "Chromium is not installed (Debian: apt-get install chromium)")
    assert found is not None
    return found


def headless(browser: str, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: the test may run as root, where Chromium's sandbox refuses to start.
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={page.parent / 'chromium-profile'}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True)


def chart(dom: str, title: str) -> str:
    match = re.search(r'<svg class="chart [^"]*"[^>]*aria-label="' + re.escape(title) + r'".*?</svg>', dom, re.S)
    assert match, f"chart {title!r} is not in the rendered page"
    return match.group(0)


def drawn_bars(svg: str) -> dict[str, float]:
    """label/series -> value of every bar Chromium kept, checking each has a visible height."""
    bars = {}
    for tag in re.findall(r'<rect class="bar"[^>]*>', svg):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        assert float(attrs["height"]) > 0 and float(attrs["width"]) > 0
        bars[f'{attrs["data-label"]}/{attrs["data-series"]}'] = float(attrs["data-value"])
    return bars


def test_the_html_report_renders_in_chromium_with_its_charts(env: Env, app: App, tmp_path: Path) -> None:
    browser = chromium()
    seed(app)
    page = tmp_path / "report.html"
    assert "wrote" in env.ok("report", *WEEK, "--html", str(page))
    html = page.read_text()
    assert "<script" not in html and not re.search(r"https?://", html), "nothing is fetched when it is opened"
    assert "default-src 'none'" in html

    dom = headless(browser, page, "--dump-dom").stdout
    volume = chart(dom, "Cases created and resolved per day")
    points = re.findall(r'<circle class="point" data-series="(\w+)" data-label="([\d-]+)" data-value="(\d+)"', volume)
    assert ("created", "2026-11-20", "1") in points and ("resolved", "2026-11-19", "1") in points
    assert len(points) == 14, "7 days, 2 series"
    assert drawn_bars(chart(dom, "SLA compliance per queue and KPI")) == {
        "support first response/within target": 1, "support first response/breached": 1,
        "support resolve by/within target": 1, "support resolve by/near breach": 1}
    backlog = drawn_bars(chart(dom, "Open cases by queue and age"))  # ages depend on today: sum them
    assert {q: sum(v for k, v in backlog.items() if k.startswith(q + "/")) for q in ("billing", "support")} == \
        {"billing": 2, "support": 1}
    assert drawn_bars(chart(dom, "Cases per subject branch")) == {
        "Hardware/cases": 3, "Hardware &gt; Printer/cases": 2, "Billing/cases": 1, "(no subject)/cases": 1}
    assert "Problem Solved" in dom and "Acme 2026" in dom, "the tables are there too"

    shot = tmp_path / "report.png"
    headless(browser, page, f"--screenshot={shot}", "--window-size=1300,1400")
    from PIL import Image

    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1300, 1400)
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "not a blank page"
    counts = {colour: n for n, colour in colours}
    assert counts.get((0x2F, 0x6D, 0xB5), 0) > 500, "the charts' first colour is painted (bars and lines)"
    assert counts.get((0xC2, 0x3B, 0x3B), 0) > 50, "the breached SLA bar is painted"
