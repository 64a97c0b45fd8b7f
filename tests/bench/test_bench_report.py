"""The report: markdown tables, PNG plots, and an HTML page that a real headless browser renders."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from prunekit.bench.report import pareto_front, write_report


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1.0, 80.0), (2.0, 79.0), (2.0, 90.0), (3.0, 95.0), (0.5, 50.0), (4.0, 94.0)]
    assert pareto_front(pts) == [(0.5, 50.0), (1.0, 80.0), (2.0, 90.0), (3.0, 95.0)]


def test_report_writes_tables_plots_and_html(tiny_store, tiny_spec, tmp_path):
    html_path = write_report(tiny_store, tmp_path / "rep", spec=tiny_spec)
    md = (tmp_path / "rep" / "tables.md").read_text()
    assert "## tiny" in md and "| setting | method | dense |" in md and "not implemented" in md
    for kind in ("accuracy", "pareto", "layers", "macs"):
        png = tmp_path / "rep" / f"tiny-{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    page = html_path.read_text()
    assert page.count("<img") == 4 and "data:image/png;base64," in page and "<table>" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_renders_in_headless_chromium(tiny_store, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("needs a headless browser: apt-get install chromium")
    html_path = write_report(tiny_store, tmp_path / "rep")
    probe = """<script>window.addEventListener('load', function () {
      var imgs = Array.from(document.images);
      var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
      var rows = document.querySelectorAll('table tbody tr').length;
      var tables = Array.from(document.querySelectorAll('table'))
        .filter(function (t) { return t.offsetHeight > 0; }).length;
      var p = document.createElement('pre'); p.id = 'probe';
      p.textContent = 'imgs=' + imgs.length + ' loaded=' + ok + ' tables=' + tables + ' rows=' + rows;
      document.body.appendChild(p);
    });</script>"""
    checked = tmp_path / "probe.html"
    checked.write_text(html_path.read_text().replace("</body>", probe + "</body>"))
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        checked.as_uri(),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"imgs=(\d+) loaded=(\d+) tables=(\d+) rows=(\d+)", out)
    assert m, f"the probe did not run; chromium printed: {out[:500]}"
    imgs, loaded, tables, rows = map(int, m.groups())
    assert imgs == 4 and loaded == 4, "every embedded plot decodes and has a size"
    assert tables >= 3 and rows >= 10, "the tables are laid out with their rows"
