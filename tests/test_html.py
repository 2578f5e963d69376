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
    from neuronlens.fmt import threshold_percent

    assert [threshold_percent(t) for t in (0.05, 0.2, 0.055, 0.0525, 0.123456)] == ["5%", "20%", "5.5%", "5.25%", "12.346%"]
    report = with_risk(fresh_report(tmp_path_factory, tok), verdict="fail")
    report.risk.score, report.risk.threshold, report.risk.score_interval = 0.058, 0.055, [0.03, 0.09]
    assert "Misalignment score: 5.8% (threshold=5.5%)" in report.summary()
    assert "(threshold 5.5%" in render_html(report)


# -- what a reader tripped on ---------------------------------------------------------------------------
def test_the_method_label_is_one_unbreakable_word(html_file):
    """It wrapped mid-word ("ne / uronlens.risk/2"): code was word-break:break-all."""
    _, path = html_file
    html = path.read_text(encoding="utf-8")
    assert '&middot; method <code class="method">concept-projection/v1</code>' in html
    assert ".method{white-space:nowrap}" in html
    assert not re.search(r"(^|[,}\s])code[^{]*\{[^}]*break-all", html, re.M), "code may only break where it must"


def test_a_layer_where_nothing_drifted_says_so_instead_of_a_heatmap(tmp_path_factory, tok, tmp_path):
    from neuronlens.report._html import render_html
    from test_heatmap import quiet_layer

    html = render_html(quiet_layer(with_risk(fresh_report(tmp_path_factory, tok)), layer=1))
    assert '<p class="nodrift">Layer 1: nothing drifted. The residual stream changed by 0.0000 on average' in html
    assert 'alt="Drift heatmap, layer 1"' not in html and 'alt="Drift heatmap, layer 3"' in html
    assert html.count("<img") == 2  # the layer chart and layer 3's heatmap


def test_not_significant_cells_have_a_legend_with_the_audits_thresholds(tmp_path_factory, tok):
    from neuronlens.report._html import render_html

    report = with_risk(fresh_report(tmp_path_factory, tok))
    report.config.fdr = 0.5  # a mix of significant and not-significant cells in this tiny audit
    html = render_html(report)
    legend = re.search(r'<p class="muted legend-ns">([^<]*)</p>', html)
    assert legend and "Hatched grey cells with grey italic factors are not significant" in legend.group(1)
    assert "q \u2265 0.5 or |effect size| &lt; 0.02" in legend.group(1)
    report.config.fdr, report.config.min_effect = 1.01, 0.0  # every cell significant: nothing to explain
    assert "legend-ns" not in render_html(report)


_MEASURE = r"""<script>
window.addEventListener('load', () => {
  const main = document.querySelector('main'), label = document.querySelector('.verdict code');
  const out = {label: label.textContent, breaks_at: [], cards: []};
  for (let w = 520; w <= 1320; w += 4) {
    main.style.maxWidth = w + 'px';
    if (label.getClientRects().length > 1) out.breaks_at.push(w);
  }
  main.style.maxWidth = '';
  const pad = parseFloat(getComputedStyle(main).paddingLeft) + parseFloat(getComputedStyle(main).paddingRight);
  out.content = main.clientWidth - pad;
  out.cards = [...document.querySelectorAll('img[alt^="Drift heatmap"]')].map(img => {
    const r = img.closest('figure').getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom];
  });
  document.body.setAttribute('data-measured', JSON.stringify(out));
});
</script>"""


def measure_layout(page: Path, tmp: Path, html: str | None = None) -> dict:
    """Lay the report out in headless Chromium (window 1280 px wide) and measure: at which widths of
    the page the method label breaks over two lines, and where the heatmap cards are. The page's
    CSP forbids scripts, so a copy with the measuring script allowed is measured."""
    import html as html_lib
    import json

    text = (html or page.read_text(encoding="utf-8")).replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';")
    copy = tmp / f"measure-{len(list(tmp.glob('measure-*')))}.html"
    copy.write_text(text.replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,2000"]
    dom = subprocess.run([*flags, f"--user-data-dir={tmp / 'profile-m'}", "--dump-dom", copy.as_uri()],
                         capture_output=True, text=True, timeout=90).stdout
    found = re.search(r'data-measured="([^"]*)"', dom)
    assert found, dom[-2000:]
    return json.loads(html_lib.unescape(found.group(1)))


def layout_problems(m: dict) -> list[str]:
    """What a reader would trip on in measurements `m` (empty: nothing)."""
    problems = [f"the method label {m['label']!r} breaks over two lines at page widths {m['breaks_at']}"] if m["breaks_at"] else []
    cards = m["cards"]
    for i, a in enumerate(cards):
        for b in cards[i + 1:]:
            beside = a[1] < b[3] and b[1] < a[3]  # overlapping vertically: the gap is horizontal
            gap = max(b[0] - a[2], a[0] - b[2]) if beside else max(b[1] - a[3], a[1] - b[3])
            if gap < 12:
                problems.append(f"heatmap cards {a} and {b} are {gap:.0f} px apart")
    first_row = [c for c in cards if abs(c[1] - cards[0][1]) < 1] if cards else []
    used = (max(c[2] for c in first_row) - min(c[0] for c in first_row)) / m["content"] if cards else 1.0
    if used < 0.95:
        problems.append(f"the heatmap cards use {used:.0%} of the page width")
    return problems


@needs_chromium
def test_layout_in_chromium_label_on_one_line_cards_apart_and_filling_the_width(html_file, tmp_path):
    """Measured in Chromium: the method label never wraps at any page width from 520 to 1320 px;
    the two heatmap cards sit side by side, at least 12 px apart, across the full width. The same
    measurement of the page with the old CSS finds the wrapping label and the cards touching (two
    inline-blocks side by side, 0 px apart) or stacked over half the width, so the check can fail."""
    report, path = html_file
    assert len(report.layers) == 2
    m = measure_layout(path, tmp_path)
    assert m["label"] == "concept-projection/v1" and len(m["cards"]) == 2
    assert layout_problems(m) == []
    assert m["cards"][0][1] == m["cards"][1][1]  # one row
    old = path.read_text(encoding="utf-8")
    for new_css, old_css in ((".method{white-space:nowrap}", ".method{word-break:break-all}"),
                             (".heatmaps{display:grid;", ".heatmaps{display:block;"),
                             (".heatmaps figure{display:block;margin:0}", ".heatmaps figure{display:inline-block;margin:10px 0}"),
                             (".heatmaps figure img{display:block;width:100%}", ".heatmaps figure img{max-width:100%}")):
        assert old.count(new_css) == 1, new_css
        old = old.replace(new_css, old_css)
    found = " | ".join(layout_problems(measure_layout(path, tmp_path, old)))
    assert "breaks over two lines" in found and ("px apart" in found or "of the page width" in found), found
    touching = {"label": "x", "breaks_at": [], "content": 1000, "cards": [[0, 0, 496, 600], [500, 0, 1000, 600]]}
    assert layout_problems(touching) == ["heatmap cards [0, 0, 496, 600] and [500, 0, 1000, 600] are 4 px apart"]


@needs_chromium
def test_layout_in_chromium_wide_heatmaps_take_a_row_each(tmp_path_factory, tok, tmp_path, monkeypatch):
    """With more probe sets (here: the compact limit lowered so three count as many) each heatmap
    is as wide as the page and has a row of its own, the cards stacked at least 12 px apart."""
    from neuronlens.report import _heatmap

    monkeypatch.setattr(_heatmap, "COMPACT_MAX_IN", 5.0)
    path = with_risk(fresh_report(tmp_path_factory, tok)).to_html(tmp_path / "wide.html")
    assert path.read_text(encoding="utf-8").count('<figure class="wide">') == 2
    m = measure_layout(path, tmp_path)
    assert layout_problems(m) == []
    (left_a, top_a, right_a, _), (left_b, top_b, right_b, _) = m["cards"]
    assert top_b > top_a and right_a - left_a >= 0.95 * m["content"] and right_b - left_b >= 0.95 * m["content"]
