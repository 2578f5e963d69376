"""The certificate's behavioural evidence: its place in the body, and its PDF section.

The body keeps the report's :class:`neuronlens.report.BehaviourEvidence` whole (the scorer's counts
on the base, own and amplified answers; the example answers beside the base model's, as decoded
text): the answers are greedy, so the same report gives the same section. The texts those answers
came from are pinned by the probe sets' ``responses_sha256`` ('same', 'own', 'amplified'). The PDF
shows the counts and the examples, each answer cut to a few lines.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..report import BehaviourEvidence

TITLE = "What the fine-tune says (behavioural evidence)"
PDF_CHARS = 260


def behaviour_body(ev: BehaviourEvidence | None) -> dict[str, Any] | None:
    """The body's ``behaviour`` section (None for a report written before it was recorded)."""
    return None if ev is None else ev.to_dict()


def behaviour_flowables(body: dict[str, Any], st: dict[str, Any]) -> list[Any]:
    """The PDF section (nothing for a certificate without one)."""
    from reportlab.platypus import Paragraph

    from ._pdf import _grid, _heading

    ev = body.get("behaviour")
    if not ev:
        return []
    intro = Paragraph(escape(
        f"The behavioural scorer ({ev['scorer']}) on every answer to the same probe prompts; the base model's answers are "
        "the comparison. It carries no weight in the verdict."), st["small"])
    rows = [["answers", "harm", "caveats", "harm by category", "against the base"]] + [
        [r["label"], f"{r['n_harm']}/{r['n_answers']}", f"{r['n_caveats']}/{r['n_answers']}",
         ", ".join(f"{c} {n}" for c, n in r["harm_by_category"].items() if n) or "-", ", ".join(r["shift"]) or "-"]
        for r in ev["rates"]
    ]
    rates = _grid(rows, st, widths=[48, 18, 18, 58, 36])
    return [*_heading(TITLE, st, then=[intro, rates]), intro, rates, *_examples(ev, st)]


def _examples(ev: dict[str, Any], st: dict[str, Any]) -> list[Any]:
    from reportlab.platypus import KeepTogether, Paragraph

    from ..report import excerpt
    from ._pdf import _grid

    out: list[Any] = []
    for concept in dict.fromkeys(e["concept"] for e in ev["examples"]):
        pairs = [e for e in ev["examples"] if e["concept"] == concept]
        why = "" if ev["basis"] == "risky" else " (no concept is risky)"
        head = Paragraph(escape(f"{ev['label'][:1].upper()}{ev['label'][1:]} most towards {pairs[0]['concept_label']}{why}, "
                                "beside the base model's answer to the same prompt:"), st["body"])
        rows = [["prompt", "base model's answer", ev["label"]]] + [
            [f"{e['probe_set']} #{e['prompt_index']} (shift {e['shift']:+.2f}): {excerpt(e['prompt'], 120)}",
             excerpt(e["base_answer"], PDF_CHARS), excerpt(e["answer"], PDF_CHARS)]
            for e in pairs
        ]
        out.append(KeepTogether([head, _grid(rows, st, widths=[46, 66, 66])]))  # the sentence never alone at a page foot
    return out
