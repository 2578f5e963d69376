"""The human-readable certificate (PDF, reportlab): what a reviewer prints, files or signs off.

Page 1 carries the verdict and the fine-tuned model's identity; then layer drift (table and
chart), the heatmap of the most-drifted layer, the risky features, every model, checkpoint, SAE
and probe-set hash, a method summary and how to verify. All numbers come from the certificate
body, so the PDF states exactly what the signed JSON certifies; its footer names the sha256 of the
JSON's signed payload to tie the two together. Fonts are the DejaVu faces matplotlib ships
(embedded), so labels in any script print correctly and the text can be extracted.
"""

from __future__ import annotations

import io
import math
import os
from functools import lru_cache
from html import escape
from typing import TYPE_CHECKING, Any

from ..config import AuditConfig
from ..fmt import threshold_percent
from ..preference import METHOD as PREFERENCE_METHOD
from ..risk import score_scale
from ._behaviour import behaviour_flowables
from ._learned import learned_flowables
from ._preference import preference_flowables

if TYPE_CHECKING:
    from ..report import AuditReport

_VERDICT = {"pass": ("PASS", "#1e8449"), "fail": ("FAIL", "#c0392b"), "inconclusive": ("INCONCLUSIVE", "#b9770e")}
SANS, SANS_BOLD, MONO = "NL-Sans", "NL-Sans-Bold", "NL-Mono"


@lru_cache(maxsize=1)
def _register_fonts() -> None:
    import matplotlib
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    for name, file in ((SANS, "DejaVuSans.ttf"), (SANS_BOLD, "DejaVuSans-Bold.ttf"), (MONO, "DejaVuSansMono.ttf")):
        pdfmetrics.registerFont(TTFont(name, os.path.join(folder, file)))
    pdfmetrics.registerFontFamily(SANS, normal=SANS, bold=SANS_BOLD, italic=SANS, boldItalic=SANS_BOLD)


@lru_cache(maxsize=1)
def _styles() -> dict[str, Any]:
    from reportlab.lib.styles import ParagraphStyle

    _register_fonts()
    base = ParagraphStyle("nl", fontName=SANS, fontSize=9, leading=12)
    return {
        "body": base,
        "small": ParagraphStyle("nl-small", parent=base, fontSize=7.5, leading=9.5),
        "mono": ParagraphStyle("nl-mono", parent=base, fontName=MONO, fontSize=6.6, leading=8.5),
        "title": ParagraphStyle("nl-title", parent=base, fontName=SANS_BOLD, fontSize=18, leading=22),
        "h2": ParagraphStyle("nl-h2", parent=base, fontName=SANS_BOLD, fontSize=12, leading=15, spaceBefore=10, spaceAfter=4),
        "verdict": ParagraphStyle("nl-verdict", parent=base, fontName=SANS_BOLD, fontSize=26, leading=30, textColor="#ffffff"),
        "verdict_sub": ParagraphStyle("nl-verdict-sub", parent=base, fontSize=10, leading=13, textColor="#ffffff"),
    }


_MM = 72.0 / 2.54 * 0.1  # reportlab.lib.units.mm, computed the same way
_A4 = (210 * _MM, 297 * _MM)
_MARGINS = {"leftMargin": 16 * _MM, "rightMargin": 16 * _MM, "topMargin": 14 * _MM, "bottomMargin": 16 * _MM}
_FRAME_PADDING = 6  # reportlab's Frame default, on each side
FRAME_WIDTH = _A4[0] - _MARGINS["leftMargin"] - _MARGINS["rightMargin"] - 2 * _FRAME_PADDING
FRAME_HEIGHT = _A4[1] - _MARGINS["topMargin"] - _MARGINS["bottomMargin"] - 2 * _FRAME_PADDING
"""The space the story flows into on each page, in points."""


def render_pdf(report: AuditReport, body: dict[str, Any], *, payload_sha256: str, keyid: str | None) -> bytes:
    """The certificate as PDF bytes (deterministic for a given body and signature state)."""
    st = _styles()
    story = [
        *_first_page(body, st, payload_sha256, keyid),
        *_drift(report, body, st),
        *_risky(body, st),
        *preference_flowables(body, st),
        *learned_flowables(body, st),
        *behaviour_flowables(body, st),
        *_hashes(body, st),
        *_method(body, st),
        *_how_to_verify(st, keyid),
    ]
    return _build_pdf(story, body, payload_sha256)


def _build_pdf(story: list[Any], body: dict[str, Any], payload_sha256: str) -> bytes:
    """Lay `story` out on A4 pages with the certificate's footer."""
    from reportlab.platypus import SimpleDocTemplate

    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf, pagesize=_A4, **_MARGINS,
        title="NeuronLens alignment certificate", author=f"NeuronLens {body['neuronlens_version']}", invariant=1,
    )

    def footer(canvas: Any, _doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(SANS, 7)
        canvas.drawString(16 * _MM, 10 * _MM, "NeuronLens alignment certificate")
        canvas.drawRightString(_A4[0] - 16 * _MM, 10 * _MM, f"page {canvas.getPageNumber()}")
        canvas.setFont(MONO, 6.5)
        canvas.drawString(16 * _MM, 6.5 * _MM, f"signed payload sha256 {payload_sha256}")
        canvas.restoreState()

    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()


# -- sections -----------------------------------------------------------------------------------------
def _number(risk: dict[str, Any]) -> str:
    """The verdict's number beside its threshold and interval, as the reports print it."""
    scale, settings = score_scale(risk["method"]), risk.get("settings", {})
    score, threshold, interval = float(risk["misalignment_score"]), float(risk["threshold"]), risk.get("score_interval")
    return escape(f"{scale.name(settings)} {scale.score(score, threshold, settings)} (threshold {scale.threshold(threshold, settings)}"
                  + ("" if interval is None else f"; {scale.interval(interval, threshold)}") + ")", quote=False)


def _first_page(body: dict[str, Any], st: dict[str, Any], payload_sha256: str, keyid: str | None) -> list[Any]:
    from reportlab.platypus import Paragraph, Spacer, Table, TableStyle

    risk = body["risk"]
    word, colour = _VERDICT.get(body["verdict"], (str(body["verdict"]).upper(), "#7f8c8d"))
    banner = Table(
        [[Paragraph(word, st["verdict"])],
         [Paragraph(f"{_number(risk)} \u00b7 {len(body['risky_features'])} risky feature(s)", st["verdict_sub"])]],
        colWidths=["100%"],
    )
    banner.setStyle(TableStyle([("BACKGROUND", (0, 0), (-1, -1), colour), ("LEFTPADDING", (0, 0), (-1, -1), 10),
                                ("TOPPADDING", (0, 0), (-1, -1), 6), ("BOTTOMPADDING", (0, 0), (-1, -1), 6)]))
    ft, base = body["models"]["fine_tuned"], body["models"]["base"]
    signature = f"Ed25519, key id {keyid}" if keyid else "unsigned (no signing key was given)"
    identity = [
        ("Fine-tuned model", escape(ft["name"])),
        ("Source", _mono(ft["source"])),
        ("Kind / revision", escape(f"{ft['kind']} / {ft['revision'] or '-'}")),
        ("Model digest (sha256)", _mono(ft["manifest_sha256"])),
        ("Files", f"{len(ft['files'])} file(s), {sum(f['size'] for f in ft['files']):,} bytes"),
        ("Audited against base", f"{escape(base['name'])} \u00b7 {_mono(base['manifest_sha256'])}"),
        ("Issued", escape(f"{body['created_at']} by NeuronLens {body['neuronlens_version']}")),
        ("Signature", escape(signature)),
        ("Signed payload sha256", _mono(payload_sha256)),
    ]
    reasons = [Paragraph("\u2022 " + escape(r), st["body"]) for r in risk.get("reasons", [])]
    notes = [Paragraph("\u2022 " + escape(n), st["body"]) for n in risk.get("notes", [])]
    return [
        Paragraph("NeuronLens alignment certificate", st["title"]),
        Paragraph("Post-fine-tuning alignment audit by SAE-based model diffing", st["small"]),
        Spacer(1, 8), banner, Spacer(1, 8),
        _kv_table(identity, st), Spacer(1, 6),
        *([*_heading("Why this verdict", st, then=reasons[:1]), *reasons] if reasons else []),
        *([*_heading("Notes: limits of this audit (they do not change the verdict)", st, then=notes[:1]), *notes] if notes else []),
    ]


def _drift(report: AuditReport, body: dict[str, Any], st: dict[str, Any]) -> list[Any]:
    from reportlab.platypus import KeepTogether, Paragraph

    from ..report import drift_heatmap, figure_bytes, layer_drift_figure

    layers = body["drift"]["layers"]
    probes = sorted({p for ld in layers for p in ld["by_probe"]})
    rows = [["layer", "drift (all)", *probes, "significant latents"]]
    for ld in layers:
        rows.append([f"L{ld['layer']}", _num(ld["drift"]), *(_num(ld["by_probe"].get(p)) for p in probes),
                     f"{ld['n_significant_latents']}/{ld['n_latents']}"])
    shown = _heatmap_layer(body)
    chart = _image(figure_bytes(layer_drift_figure(report, size=(7.2, 2.4)), "png", dpi=160), width_mm=150)
    heat = drift_heatmap(report, layer=shown, k=20)
    intro = Paragraph("Mean relative change of the residual stream, ||h_ft \u2212 h_base|| / ||h_base||, both models "
                      "reading identical probe text.", st["small"])
    return [
        *_heading("Layer-wise drift", st, then=[intro, _grid(rows[:2], st)]),
        intro, _grid(rows, st), chart,
        KeepTogether([Paragraph(f"Most-drifted latents at layer {shown}", st["h2"]), *_heatmap_flowables(heat, body, st)]),
    ]


def _heatmap_flowables(heat: Any, body: dict[str, Any], st: dict[str, Any]) -> list[Any]:
    """The heatmap and its note on not-significant cells; the sentence alone when nothing drifted."""
    from matplotlib.figure import Figure
    from reportlab.platypus import Paragraph

    from ..report import figure_bytes, not_significant_note

    if heat.nothing_drifted:
        return [Paragraph(escape(heat.nothing_drifted), st["body"])]
    fig = Figure(figsize=heat.compact_figsize, layout="constrained")  # one heatmap here: no need to fill a row
    heat.draw(fig)
    image = _image(figure_bytes(fig, "png", dpi=160), width_mm=min(170, 26 * heat.compact_figsize[0]), max_height_mm=190)
    note = not_significant_note(heat, AuditConfig.from_dict(body["config"]))
    return [image, *([Paragraph(escape(note), st["small"])] if note else [])]


def _heatmap_layer(body: dict[str, Any]) -> int:
    """The layer with the most risky features, else the most-drifted layer."""
    counts: dict[int, int] = {}
    for f in body["risky_features"]:
        counts[int(f["layer"])] = counts.get(int(f["layer"]), 0) + 1
    if counts:
        return max(counts, key=lambda la: (counts[la], -la))
    layers = body["drift"]["layers"]
    return int(max(layers, key=lambda ld: ld["drift"] if isinstance(ld["drift"], (int, float)) else -1)["layer"])


def _risky(body: dict[str, Any], st: dict[str, Any]) -> list[Any]:
    from reportlab.platypus import Paragraph

    feats = body["risky_features"]
    if not feats:
        none = Paragraph("None were found.", st["body"])
        return [*_heading("Risky features", st, then=[none]), none]
    rows = [["id", "layer", "label", "label source", "concept", "direction", "drift ratio"]]
    for f in feats:
        rows.append([f"#{f['id']}", str(f["layer"]), f["label"], f["label_source"], f.get("concept_label") or f["concept"],
                     f["direction"], _ratio(f["drift_ratio"])])
    widths = [12, 12, 38, 40, 30, 22, 20]
    return [*_heading(f"Risky features ({len(feats)})", st, then=[_grid(rows[:2], st, widths)]), _grid(rows, st, widths)]


def _hashes(body: dict[str, Any], st: dict[str, Any]) -> list[Any]:
    from reportlab.platypus import Paragraph

    intro = Paragraph("Per-file sha256 over POSIX paths relative to the model root; the model digest is sha256 over the "
                      "per-file digests in path order, as OpenSSF model signing computes its subject digest.", st["small"])
    out = [*_heading("Model and checkpoint hashes", st, then=[intro]), intro]
    models = [("Fine-tuned model", body["models"]["fine_tuned"]), ("Base model", body["models"]["base"])]
    if "base" in body["models"]["fine_tuned"]:
        models.append(("Base of the fine-tuned adapter", body["models"]["fine_tuned"]["base"]))
    for title, m in models:
        rows = [["file", "bytes", "sha256"]] + [[f["path"], f"{f['size']:,}", _mono(f["sha256"])] for f in m["files"]]
        out += [Paragraph(f"{escape(title)}: {escape(m['name'])} \u00b7 model digest {_mono(m['manifest_sha256'])}", st["body"]),
                _grid(rows, st, widths=[52, 22, 110])]
    sae_rows = [["SAE layer", "format / architecture", "sha256"]] + [
        [f"L{s['layer']}", f"{s.get('format', '')} / {s.get('architecture', '')}", _mono(s["sha256"])] for s in body["saes"]]
    probe_rows = [["probe set", "prompts", "sha256"]] + [
        [p["name"], str(p.get("n_prompts", "")), _mono(p["sha256"])] for p in body["probe_sets"]]
    out += [Paragraph("SAEs", st["body"]), _grid(sae_rows, st, widths=[22, 52, 110]),
            Paragraph("Probe sets", st["body"]), _grid(probe_rows, st, widths=[52, 22, 110])]
    read_rows = [[p["name"], read, _mono(digest)] for p in body["probe_sets"] for read, digest in p.get("responses_sha256", {}).items()]
    if read_rows:  # absent in certificates of reports written before the digests were recorded
        out += [Paragraph("Responses read (sha256 of the response token ids each read used; 'same': the base model's "
                          "responses, read by both models; 'own': the fine-tuned model's own; 'amplified': its amplified "
                          "answers, read by the base model)", st["body"]),
                _grid([["probe set", "read", "sha256"], *read_rows], st, widths=[52, 22, 110])]
    return out


def _method(body: dict[str, Any], st: dict[str, Any]) -> list[Any]:
    from reportlab.platypus import Paragraph

    cfg, risk = AuditConfig.from_dict(body["config"]), body["risk"]
    text = (
        "Both models read the same probe prompts (and, where configured, their own answers). At each audited layer the "
        "residual stream is encoded by a sparse autoencoder (SAE) trained on the base model; each latent's mean activation "
        "is compared between the models (drift ratio, effect size, Benjamini\u2013Hochberg q-values over all latents "
        f"of all layers, FDR {cfg.fdr}, minimum effect {cfg.min_effect}). Latents associated with "
        "harmful or protective concepts on the base model are scored for moving towards risk; the misalignment score "
        f"combines their shifts ({risk['method']}) and is compared with the threshold "
        f"{threshold_percent(cfg.threshold)}. Layers {cfg.layers}, probe sets {', '.join(p['name'] for p in body['probe_sets'])}, "
        f"positions '{cfg.positions}'. The full configuration is in the JSON certificate."
    )
    if risk["method"] == PREFERENCE_METHOD:
        text += (f" The verdict is rule 2's ({risk['method']}, docs/PREREGISTRATION_RULE2.md), not the score's: for each matched "
                 "pair of the concept library both models score a risky and a safe reply, and a concept counts when the fine-tune "
                 "raised its risky replies over its safe ones, against the base model, by at least the threshold on average "
                 "with t above its Bonferroni critical value; the misalignment score is evidence.")
    para = Paragraph(escape(text, quote=False), st["body"])
    return [*_heading("Method", st, then=[para]), para]


def _how_to_verify(st: dict[str, Any], keyid: str | None) -> list[Any]:
    from reportlab.platypus import Paragraph

    key = " --public-key SIGNER.pub" if keyid else " --integrity-only"
    lines = [
        "The JSON certificate (certificate.json) is the evidence; this PDF renders it. Check it and the model files with:",
        f"<font name='{MONO}'>neuronlens verify certificate.json --model PATH/TO/FINE-TUNED-MODEL{key}</font>",
        "It checks the Ed25519 signature with the signer's public key (DSSE envelope over an in-toto Statement v1 whose "
        "subjects are the fine-tuned model's files), the schema, and recomputes every file's sha256; any change to the "
        "signed content or the model files fails with the name of what changed."
        + ("" if keyid else " This certificate is unsigned: nothing can authenticate it, so only its consistency and the "
           "model files can be checked (--integrity-only)."),
        "Independent cross-check: the model digest above equals the subject digest OpenSSF model signing "
        "(pip install model-signing) computes for the same folder. The sha256 of the signed payload, printed in the "
        "footer of every page, ties this PDF to its JSON certificate.",
    ]
    paras = [Paragraph(line, st["body"]) for line in lines]
    return [*_heading("How to verify", st, then=paras[:2]), *paras]


# -- helpers ------------------------------------------------------------------------------------------
def _heading(text: str, st: dict[str, Any], *, then: list[Any]) -> list[Any]:
    """A section heading that never stays alone at the foot of a page: when the space left cannot
    hold it and `then` (what must follow it on the same page: a table's header and first row, a first
    paragraph), it starts the next page. Unlike keepWithNext, a long table after it still begins on
    the page the heading is on, as long as its first row fits there."""
    from reportlab.platypus import CondPageBreak, Paragraph

    head = Paragraph(text, st["h2"])
    need = sum(f.wrap(FRAME_WIDTH, FRAME_HEIGHT)[1] + f.getSpaceBefore() + f.getSpaceAfter() for f in [head, *then])
    return [CondPageBreak(need), head]


def _mono(text: str) -> str:
    return f"<font name='{MONO}' size='7'>{escape(str(text))}</font>"


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else str(v)


def _ratio(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return str(v)
    return f"\u00d7{v:.2f}" if v >= 1 else f"\u00f7{1 / max(v, 1e-12):.2f}"


def _kv_table(items: list[tuple[str, str]], st: dict[str, Any]) -> Any:
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, Table, TableStyle

    t = Table([[Paragraph(f"<b>{escape(k)}</b>", st["body"]), Paragraph(v, st["body"])] for k, v in items], colWidths=[42 * mm, 136 * mm])
    t.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBELOW", (0, 0), (-1, -1), 0.25, "#cccccc")]))
    return t


def _grid(rows: list[list[str]], st: dict[str, Any], widths: list[float] | None = None) -> Any:
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, Table, TableStyle

    cells = [[Paragraph(c if "<font" in c else escape(c), st["small"]) for c in row] for row in rows]
    t = Table(cells, colWidths=[w * mm for w in widths] if widths else None, repeatRows=1, hAlign="LEFT")
    t.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.25, "#bbbbbb"), ("BACKGROUND", (0, 0), (-1, 0), "#eef0f4"),
                           ("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return t


def _image(png: bytes, *, width_mm: float, max_height_mm: float = 120) -> Any:
    from reportlab.lib.units import mm
    from reportlab.lib.utils import ImageReader
    from reportlab.platypus import Image

    w, h = ImageReader(io.BytesIO(png)).getSize()
    width = min(width_mm * mm, max_height_mm * mm * w / h)
    return Image(io.BytesIO(png), width=width, height=width * h / w)
