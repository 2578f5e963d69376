"""The self-contained HTML report: one file, no scripts, no network.

Everything the page needs is inside it: CSS inline, figures as ``data:`` SVG images, and a
Content-Security-Policy that forbids loading anything else, so it can be mailed, archived or
opened offline and always shows the same thing. Sections: verdict, layer-wise drift (chart and
table), one heatmap per audited layer, one card per risky feature with its evidence contexts
(tokens shaded by activation, base vs fine-tuned), and the digests of models, SAEs and probe sets.
"""

from __future__ import annotations

import base64
import json
import math
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import ensure_writable_dir, write_text_atomic
from ..risk import score_scale
from ._figure_io import figure_bytes
from ._heatmap import drift_heatmap, layer_drift_figure, not_significant_note
from ._behaviour import html_section as behaviour_section
from ._learned import html_section as learned_section
from ._preference import html_section as preference_section

if TYPE_CHECKING:
    from ..risk import Evidence, RiskyFeature
    from ._report import AuditReport

HEATMAP_ROWS = 20
_VERDICT_STYLE = {"pass": ("PASS", "#1e8449"), "fail": ("FAIL", "#c0392b"), "inconclusive": ("INCONCLUSIVE", "#b9770e")}

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#1c1e21}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 10px;border-bottom:1px solid #ccd;padding-bottom:4px}
h3{font-size:16px;margin:0 0 8px}
.muted{color:#666;font-size:13px}
.verdict{display:flex;gap:20px;align-items:center;background:#fff;border-radius:8px;padding:16px 20px;margin-top:16px;
 border-left:10px solid var(--c)}
.badge{font-size:26px;font-weight:700;color:var(--c)}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0}
th,td{border:1px solid #dde;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef0f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.hash{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;overflow-wrap:anywhere}
.hash{word-break:break-all}
.method{white-space:nowrap}
figure{background:#fff;border-radius:8px;padding:10px;margin:10px 0;display:inline-block}
figure img{max-width:100%;height:auto}
.heatmaps{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,460px),1fr));gap:16px;align-items:start;margin:10px 0}
.heatmaps figure{display:block;margin:0}
.heatmaps figure.wide{grid-column:1/-1}
.heatmaps figure img{display:block;width:100%}
.nodrift{background:#fff;border-radius:8px;padding:10px 14px;margin:10px 0}
figcaption{font-size:12px;color:#555}
.card{background:#fff;border-radius:8px;padding:14px 18px;margin:12px 0;border-left:6px solid #c0392b}
.tag{display:inline-block;background:#eef0f4;border-radius:10px;padding:1px 8px;margin-right:4px;font-size:12px}
.ctx{margin:8px 0 12px}
.tokens{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:13px;white-space:pre-wrap;line-height:1.9}
.tokens span{border-radius:3px;padding:1px 0}
.rowlabel{display:inline-block;width:92px;font-size:12px;color:#555}
pre{background:#fff;padding:10px;border-radius:6px;overflow-x:auto;font-size:12px}
details{margin:6px 0}
"""


def write_html(report: AuditReport, path: str | Path) -> Path:
    """Render `report` and write it atomically to `path` (the folder is created if needed)."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    return write_text_atomic(path, render_html(report))


def render_html(report: AuditReport) -> str:
    """The whole page as a string."""
    body = "\n".join(
        [
            _header(report),
            _verdict(report),
            _drift_section(report),
            _heatmap_section(report),
            _risky_section(report),
            behaviour_section(report.behaviour),
            preference_section(report.preference, decides=report.decided_by_preference),
            learned_section(report.learned),
            _identity_section(report),
            _settings_section(report),
        ]
    )
    title = f"NeuronLens audit: {report.ft.get('name', 'fine-tuned model')}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n"
    )


# -- sections ---------------------------------------------------------------------------------------
def _header(report: AuditReport) -> str:
    return (
        "<h1>Post-fine-tuning alignment audit</h1>"
        f"<div class=\"muted\">NeuronLens {escape(report.neuronlens_version)} &middot; audited {escape(report.created_at)}</div>"
        f"<div>Base <b>{escape(str(report.base.get('name')))}</b> &rarr; fine-tuned <b>{escape(str(report.ft.get('name')))}</b></div>"
    )


def _interval(risk: Any) -> str:
    if risk.score_interval is None:
        return ""
    return f"; {score_scale(risk.method).interval(risk.score_interval, risk.threshold)}{', borderline' if risk.borderline else ''}"


def _verdict(report: AuditReport) -> str:
    risk = report.risk
    if risk is None:
        return (
            "<section class=\"verdict\" style=\"--c:#7f8c8d\"><div class=\"badge\">NOT SCORED</div>"
            "<div>Risk scoring was not run for this audit, so there is no misalignment score or verdict; "
            "the drift evidence below still applies.</div></section>"
        )
    word, colour = _VERDICT_STYLE.get(risk.verdict, (risk.verdict.upper(), "#7f8c8d"))
    scale = score_scale(risk.method)
    reasons = "".join(f"<li>{escape(r)}</li>" for r in risk.reasons)
    notes = "".join(f"<li>{escape(n)}</li>" for n in risk.notes)
    return (
        f"<section class=\"verdict\" style=\"--c:{colour}\"><div class=\"badge\">{escape(word)}</div><div>"
        f"<div>{escape(scale.name(risk.settings))} <b>{escape(scale.score(risk.score, risk.threshold, risk.settings))}</b> "
        f"(threshold {escape(scale.threshold(risk.threshold, risk.settings))}{_interval(risk)}) &middot; "
        f"{len(risk.risky_features)} risky feature(s) &middot; method <code class=\"method\">{escape(risk.method)}</code></div>"
        f"<ul>{reasons}</ul>"
        + (f"<p><b>Notes</b> (limits of this audit; they do not change the verdict)</p><ul>{notes}</ul>" if notes else "")
        + "</div></section>"
    )


def _drift_section(report: AuditReport) -> str:
    probes = sorted({p for ld in report.layers for p in ld.by_probe})
    head = "".join(f"<th>{escape(p)}</th>" for p in probes)
    rows = "".join(
        f"<tr><td>L{ld.layer}</td><td class=\"num\">{ld.drift:.4f}</td>"
        + "".join(f"<td class=\"num\">{ld.by_probe.get(p, math.nan):.4f}</td>" for p in probes)
        + f"<td class=\"num\">{ld.cosine:.3f}</td><td class=\"num\">{ld.n_significant_latents}/{ld.n_latents}</td>"
        f"<td class=\"num\">{ld.n_tokens}</td></tr>"
        for ld in report.layers
    )
    chart = _img(figure_bytes(layer_drift_figure(report), "svg"), "Layer-wise drift chart")
    warnings = "".join(f"<li>{escape(w)}</li>" for w in report.sae_warnings)
    return (
        "<h2>Layer-wise drift</h2>"
        f"<figure>{chart}<figcaption>Mean relative change of the residual stream, ||h_ft &minus; h_base|| / ||h_base||, "
        "both models reading identical text.</figcaption></figure>"
        f"<table><tr><th>layer</th><th>drift (all)</th>{head}<th>cosine</th><th>significant latents</th><th>tokens</th></tr>{rows}</table>"
        + (f"<ul class=\"muted\">{warnings}</ul>" if warnings else "")
    )


def _heatmap_section(report: AuditReport) -> str:
    """One heatmap card per layer that drifted, in a grid; a sentence for each layer where nothing did."""
    quiet, figs, legend = [], [], None
    for ld in report.layers:
        hm = drift_heatmap(report, layer=ld.layer, k=HEATMAP_ROWS)
        if hm.nothing_drifted:
            quiet.append(f"<p class=\"nodrift\">{escape(hm.nothing_drifted)}</p>")
            continue
        legend = legend or not_significant_note(hm, report.config)
        wide = " class=\"wide\"" if hm.wide else ""
        figs.append(f"<figure{wide}>{_img(hm.to_bytes('svg'), f'Drift heatmap, layer {ld.layer}')}</figure>")
    grid = f"<div class=\"heatmaps\">{''.join(figs)}</div>" if figs else ""
    note = f"<p class=\"muted legend-ns\">{escape(legend)}</p>" if legend else ""
    return "<h2>Most-drifted latents</h2>" + "".join(quiet) + grid + note


def _risky_section(report: AuditReport) -> str:
    if report.risk is None:
        return "<h2>Risky features</h2><p class=\"muted\">Not computed (no risk scoring in this audit).</p>"
    feats = report.risk.risky_features
    if not feats:
        return "<h2>Risky features</h2><p>No risky features were found.</p>"
    return f"<h2>Risky features ({len(feats)})</h2>" + "".join(_feature_card(f) for f in feats)


def _feature_card(f: RiskyFeature) -> str:
    from ._report import _fmt_ratio

    tags = "".join(
        f"<span class=\"tag\">{escape(t)}</span>" for t in (f"layer {f.layer}", f.concept_label or f.concept, f.polarity, f.direction)
    )
    metrics = (
        f"<table><tr><th>drift ratio</th><th>effect size</th><th>q-value</th><th>concept AUROC</th><th>share of concept shift</th>"
        f"<th>label source</th></tr><tr><td class=\"num\">{escape(_fmt_ratio(f.drift_ratio))}</td>"
        f"<td class=\"num\">{f.effect_size:.3g}</td><td class=\"num\">{f.q_value:.2g}</td><td class=\"num\">{f.association:.2f}</td>"
        f"<td class=\"num\">{f.contribution:.0%}</td><td>{escape(f.label_source)}</td></tr></table>"
    )
    contexts = "".join(_evidence(e) for e in f.evidence) or "<p class=\"muted\">No evidence contexts were recorded.</p>"
    return f"<div class=\"card\"><h3>#{f.latent} {escape(f.label)}</h3><div>{tags}</div>{metrics}{contexts}</div>"


def _evidence(e: Evidence) -> str:
    """A probe context with each token shaded by the latent's activation, base row above the
    fine-tuned row, both on one scale so the shading compares across models."""
    scale = max([abs(a) for a in [*e.base_acts, *e.ft_acts]] + [1e-9])
    base_label = "base" if e.read == "same" else "base (reading the fine-tuned answer)"
    read = {"same": "both models read the same text", "amplified": "an amplified answer, read by the base model"}.get(
        e.read, "the fine-tuned model's own answer")
    ft_label = "base on it" if e.read == "amplified" else "fine-tuned"
    base_row = _shaded(e.tokens, e.base_acts, scale) if e.base_acts else "<span class=\"muted\">(not measured)</span>"
    return (
        f"<div class=\"ctx\"><div class=\"muted\">probe set <b>{escape(e.probe_set)}</b> &middot; {read} &middot; "
        f"max activation {scale:.3g}</div><div>Prompt: {escape(e.prompt)}</div>"
        f"<div class=\"tokens\"><span class=\"rowlabel\">{escape(base_label)}</span>{base_row}</div>"
        f"<div class=\"tokens\"><span class=\"rowlabel\">{ft_label}</span>{_shaded(e.tokens, e.ft_acts, scale)}</div></div>"
    )


def _shaded(tokens: list[str], acts: list[float], scale: float) -> str:
    spans = []
    for tok, act in zip(tokens, acts):
        alpha = min(1.0, abs(act) / scale) * 0.85
        spans.append(
            f"<span title=\"{act:.4g}\" style=\"background:rgba(192,57,43,{alpha:.3f})\">{escape(tok)}</span>"
        )
    return "".join(spans)


def _identity_section(report: AuditReport) -> str:
    models = [("Base model", report.base), ("Fine-tuned model", report.ft)]
    if isinstance(report.ft.get("base"), dict):
        models.append(("Fine-tuned model's base (adapter)", report.ft["base"]))
    parts = ["<h2>What was audited (digests)</h2>"]
    for title, ident in models:
        parts.append(_model_table(title, ident))
    sae_rows = "".join(
        f"<tr><td>L{s.get('layer')}</td><td>{escape(str(s.get('format')))}</td><td>{escape(str(s.get('architecture')))}</td>"
        f"<td class=\"num\">{s.get('d_sae')}</td><td class=\"hash\">{escape(str(s.get('sha256')))}</td></tr>"
        for s in report.saes
    )
    parts.append(f"<h3>SAEs</h3><table><tr><th>layer</th><th>format</th><th>architecture</th><th>latents</th><th>sha256</th></tr>{sae_rows}</table>")
    probe_rows = "".join(
        f"<tr><td>{escape(str(p.get('name')))}</td><td>{escape(str(p.get('source')))}</td><td class=\"num\">{p.get('n_prompts')}</td>"
        f"<td class=\"hash\">{escape(str(p.get('sha256')))}</td></tr>"
        for p in report.probe_sets
    )
    parts.append(f"<h3>Probe sets</h3><table><tr><th>name</th><th>source</th><th>prompts</th><th>sha256</th></tr>{probe_rows}</table>")
    return "".join(parts)


def _model_table(title: str, ident: dict[str, Any]) -> str:
    files = ident.get("files") or []
    file_rows = "".join(
        f"<tr><td><code>{escape(str(f['path']))}</code></td><td class=\"num\">{f.get('size', '')}</td>"
        f"<td class=\"hash\">{escape(str(f['sha256']))}</td></tr>"
        for f in files
    )
    return (
        f"<h3>{escape(title)}</h3><table>"
        f"<tr><th>name</th><td>{escape(str(ident.get('name')))}</td></tr>"
        f"<tr><th>source</th><td><code>{escape(str(ident.get('source')))}</code></td></tr>"
        f"<tr><th>kind / revision</th><td>{escape(str(ident.get('kind')))} / {escape(str(ident.get('revision') or '-'))}</td></tr>"
        f"<tr><th>manifest sha256</th><td class=\"hash\">{escape(str(ident.get('manifest_sha256')))}</td></tr></table>"
        f"<details><summary>{len(files)} file(s) with their sha256</summary>"
        f"<table><tr><th>path</th><th>bytes</th><th>sha256</th></tr>{file_rows}</table></details>"
    )


def _settings_section(report: AuditReport) -> str:
    config = escape(json.dumps(report.config.to_dict(), indent=2, sort_keys=True, default=str))
    return (
        "<h2>Settings</h2><details><summary>Audit configuration</summary>"
        f"<pre>{config}</pre></details>"
        "<p class=\"muted\">The manifest sha256 is computed as OpenSSF model signing computes its subject digest "
        "(sha256 over the per-file sha256 digests in sorted path order), so it can be cross-checked with its tools.</p>"
    )


def _img(svg: bytes, alt: str) -> str:
    data = base64.b64encode(svg).decode("ascii")
    return f"<img alt=\"{escape(alt)}\" src=\"data:image/svg+xml;base64,{data}\">"
