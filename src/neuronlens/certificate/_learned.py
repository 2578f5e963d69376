"""The certificate's 'what this fine-tune appears to have been trained on' section (Activation
Difference Lens): its place in the body, and its PDF page. Evidence only: not part of the verdict.

The body keeps the lens's pooled reading at each layer (top tokens promoted and suppressed, with
their logit-lens probabilities) and every steered sample beside the unsteered one; the PDF shows
the first tokens and the first two samples. Same report, same section: the samples are seeded.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..learned import LayerLens, LearnedLens

BODY_TOKENS = 10
PDF_TOKENS = 10
PDF_SAMPLES = 2
TITLE = "What this fine-tune appears to have been trained on"


def learned_body(lens: LearnedLens | None) -> dict[str, Any] | None:
    """The body's ``learned`` section of `lens` (None when the audit ran no lens)."""
    if lens is None:
        return None
    return {
        "method": lens.method,
        "text_source": lens.text_source,
        "n_texts": int(lens.n_texts),
        "verdict_weight": "none",
        "layers": [_layer(layer) for layer in lens.layers],
    }


def _layer(layer: LayerLens) -> dict[str, Any]:
    st = layer.steering
    return {
        "layer": int(layer.layer),
        "relative_shift": layer.relative_shift,
        "promoted": [t.to_dict() for t in layer.pooled.promoted[:BODY_TOKENS]],
        "suppressed": [t.to_dict() for t in layer.pooled.suppressed[:BODY_TOKENS]],
        "steering": None if st is None else st.to_dict(),
    }


def learned_flowables(body: dict[str, Any], st: dict[str, Any]) -> list[Any]:
    """The PDF section (nothing for a certificate without one)."""
    from reportlab.platypus import Paragraph

    from ._pdf import _heading

    learned = body.get("learned")
    if not learned:
        return []
    intro = Paragraph(escape(
        "Activation Difference Lens: the mean fine-tuned minus base residual at the first tokens of text unrelated to "
        f"the probes ({learned['text_source']}, {learned['n_texts']} texts), read through the base model's logit lens "
        "and used to steer the base model. It shows what the fine-tune's data was about and carries no weight in the "
        "verdict."), st["small"])
    parts = [part for layer in learned["layers"] for part in _pdf_layer(layer, st)]
    return [*_heading(TITLE, st, then=[intro, *parts[:2]]), intro, *parts]


def _pdf_layer(layer: dict[str, Any], st: dict[str, Any]) -> list[Any]:
    from reportlab.platypus import Paragraph

    from ._pdf import _grid

    shift = layer["relative_shift"]
    shift_text = f"{shift:.1%}" if isinstance(shift, (int, float)) else str(shift)
    head = Paragraph(escape(f"Layer {layer['layer']} \u00b7 shift {shift_text} of the base model's residual norm"), st["body"])
    promoted, suppressed = layer["promoted"][:PDF_TOKENS], layer["suppressed"][:PDF_TOKENS]
    rows = [["#", "promoted token", "probability", "suppressed token", "probability"]] + [
        [str(i + 1), *_cells(promoted, i), *_cells(suppressed, i)] for i in range(max(len(promoted), len(suppressed)))
    ]
    out = [head, _grid(rows, st, widths=[8, 50, 22, 50, 22])]
    steering = layer.get("steering")
    if steering:
        samples = steering["samples"][:PDF_SAMPLES]
        note = (f"Steered samples (x{steering['factor']:g} the typical residual norm, temperature {steering['temperature']:g}, "
                f"seed {steering['seed']}) beside the base model's unsteered ones:")
        out += [Paragraph(escape(note), st["small"]),
                _grid([["prompt", "steered", "unsteered"]] + [[s["prompt"], s["steered"], s["unsteered"]] for s in samples],
                      st, widths=[32, 70, 70])]
    return out


def _cells(tokens: list[dict[str, Any]], i: int) -> list[str]:
    if i >= len(tokens):
        return ["", ""]
    return [repr(tokens[i]["token"]), f"{tokens[i]['prob']:.3f}"]
