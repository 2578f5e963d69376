"""The HTML report: one self-contained file (no network), with the verdict, drift chart, heatmaps,
risky-feature cards with shaded evidence, and digests; opened in headless Chromium it renders
without console errors and its screenshot is not blank."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from neuronlens import alignment
from test_heatmap import distinct_colours, fresh_report, with_risk

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def html_file(tmp_path_factory, tok) -> tuple[alignment.AuditReport, Path]:
    report = with_risk(fresh_report(tmp_path_factory, tok))
    path = report.to_html(tmp_path_factory.mktemp("html") / "sub" / "report.html")
    return report, path


def test_one_self_contained_file_with_everything(html_file):
    report, path = html_file
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
    html = path.read_text(encoding="utf-8")
    # nothing is loaded from anywhere: every src is a data: URI, no scripts, no links, a CSP forbids the rest
    assert re.findall(r'\bsrc="([^"]*)"', html) and all(s.startswith("data:image/svg+xml;base64,") for s in re.findall(r'\bsrc="([^"]*)"', html))
    assert not re.search(r"<script|<link|<iframe|@import|url\(", html, re.I)
    assert "default-src 'none'" in html
    assert ">FAIL<" in html and "62%" in html and "Harmful-advice latents rose" in html
    assert "<b>Notes</b>" in html and "audited layers): insecure_code.</li>" in html
    assert html.count("<img") == 1 + len(report.layers)  # layer chart + one heatmap per layer
    for f in report.risk.risky_features:
        assert f"#{f.latent} " in html
    assert "unsafe &lt;compliance&gt; &amp; &quot;advice&quot;" in html  # labels are escaped, not injected
    # evidence: tokens shaded by activation, base row and fine-tuned row on one scale
    assert html.count('title="3"') >= 2 and "rgba(192,57,43,0.850)" in html and "rgba(192,57,43,0.000)" in html
    for digest in [report.base["manifest_sha256"], report.ft["manifest_sha256"],
                   *(f["sha256"] for f in report.ft["files"]), *(s["sha256"] for s in report.saes),
                   *(p["sha256"] for p in report.probe_sets)]:
        assert digest in html


def test_report_without_risk_says_not_scored(tmp_path_factory, tok, tmp_path):
    report = fresh_report(tmp_path_factory, tok)
    html = report.to_html(tmp_path / "r.html").read_text()
    assert "NOT SCORED" in html and "Risk scoring was not run" in html and "<h2>Risky features</h2>" in html


def run_chromium(page: Path, tmp: Path) -> tuple[Path, str, str]:
    """Screenshot `page` and dump its DOM in headless Chromium; returns (png, console lines, dom)."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             "--enable-logging=stderr", "--v=0"]
    png = tmp / "shot.png"
    shot = subprocess.run([*flags, f"--user-data-dir={tmp / 'profile-a'}", "--window-size=1280,1800",
                           f"--screenshot={png}", page.as_uri()], capture_output=True, text=True, timeout=90)
    dom = subprocess.run([*flags, f"--user-data-dir={tmp / 'profile-b'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=90)
    console = [line for line in (shot.stderr + dom.stderr).splitlines() if ":CONSOLE" in line]
    assert png.is_file(), shot.stderr[-2000:]
    return png, "\n".join(console), dom.stdout


@needs_chromium
def test_chromium_renders_it_without_console_errors(html_file, tmp_path):
    report, path = html_file
    png, console, dom = run_chromium(path, tmp_path)
    assert console == "", f"browser console messages:\n{console}"
    assert distinct_colours(png) > 100, "the screenshot is blank"
    assert "Post-fine-tuning alignment audit" in dom and dom.count("<img") == 1 + len(report.layers)


@needs_chromium
def test_the_console_check_catches_errors(tmp_path):
    """The console check above can fail: a page that logs an error, and one that tries the network."""
    page = tmp_path / "bad.html"
    page.write_text('<html><head><meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:">'
                    '</head><body><img src="https://example.invalid/x.png"><p>x</p></body></html>')
    _, console, _ = run_chromium(page, tmp_path)
    assert "Content Security Policy" in console


def test_a_pass_just_under_the_threshold_does_not_print_the_threshold_as_its_score(tmp_path_factory, tok):
    """4.99% beside a 5% threshold must not read "5% (threshold=5%) pass" in the summary or the report."""
    from neuronlens.report._html import render_html

    report = with_risk(fresh_report(tmp_path_factory, tok), verdict="pass")
    report.risk.score, report.risk.threshold, report.risk.score_interval = 0.0499365, 0.05, [0.0, 0.1]
    assert "Misalignment score: 4.99% (threshold=5%)  \u2713" in report.summary()
    assert "Misalignment score <b>4.99%</b> (threshold 5%" in render_html(report)
    report.risk.score = 0.12
    assert "Misalignment score: 12% (threshold=5%)" in report.summary()  # away from the threshold: whole percents, as before


def test_a_threshold_that_is_not_a_whole_percent_is_printed_as_it_is(tmp_path_factory, tok):
    """threshold=0.055 is the rule the verdict was decided by: printed "6%" it would misstate it
    (a 5.8% fail would read as below its threshold)."""
    from neuronlens.report._html import render_html
    from neuronlens.risk._types import threshold_percent

    assert [threshold_percent(t) for t in (0.05, 0.2, 0.055, 0.0525, 0.123456)] == ["5%", "20%", "5.5%", "5.25%", "12.346%"]
    report = with_risk(fresh_report(tmp_path_factory, tok), verdict="fail")
    report.risk.score, report.risk.threshold, report.risk.score_interval = 0.058, 0.055, [0.03, 0.09]
    assert "Misalignment score: 5.8% (threshold=5.5%)" in report.summary()
    assert "(threshold 5.5%" in render_html(report)
