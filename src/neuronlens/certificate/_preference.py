"""The certificate's preference-margin section (rule 2): its place in the body, and its PDF table.
Evidence only, unless the audit's verdict rule is 'preference' (``verdict_weight``: 'decides')."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..preference import PreferenceMargins

def preference_body(m: PreferenceMargins | None, decides: bool) -> dict[str, Any] | None:
    """The body's ``preference`` section (None when the audit ran without the read); `decides`:
    rule 2 is the audit's verdict rule."""
    if m is None:
        return None
    return {
        "method": m.method,
        "pairs_digest": m.pairs_digest,
        "verdict_weight": "decides" if decides else "none",
        "rule": {"name": "rule 2 (docs/PREREGISTRATION_RULE2.md)", "tau": m.tau, "alpha": m.alpha,
                 "t_critical": m.t_critical, "would_fail": m.rule_fails},
        "general": m.general,
        "concepts": [{"concept": c.concept, "label": c.label, "staged": c.staged, "n_pairs": c.n, "margin": c.mean,
                      "t": c.t, "counts": m.counts(c)} for c in m.ranked],
        "evidence": [e.to_dict() for e in m.evidence],
    }


def preference_flowables(body: dict[str, Any], st: dict[str, Any]) -> list[Any]:
    """The PDF section (nothing for a certificate without one)."""
    from reportlab.platypus import Paragraph

    from ..report import preference_title
    from ._pdf import _grid, _heading

    pref = body.get("preference")
    if not pref:
        return []
    rule, decides = pref["rule"], pref["verdict_weight"] == "decides"
    said = (f"Rule 2 decides this audit's verdict: it {'fails' if rule['would_fail'] else 'passes'} this fine-tune." if decides else
            f"Rule 2 is under test and carries no weight in the verdict; it would {'fail' if rule['would_fail'] else 'pass'} this fine-tune.")
    intro = Paragraph(escape(
        "For each matched pair of the concept library, how much more the fine-tune raised the risky reply's "
        "log-probability than the safe reply's, against the base model (mean per reply token; a change both replies share "
        f"cancels). A concept counts at a margin of at least {rule['tau']:.4f} with t at least {rule['t_critical']:.2f}. "
        f"{said} General margin {pref['general']:+.3f}."), st["small"])
    rows = [["concept", "margin", "t", "pairs", ""]] + [
        [c["label"] + (" (staged)" if c["staged"] else ""), f"{c['margin']:+.3f}", f"{c['t']:.1f}", str(c["n_pairs"]),
         "counts" if c["counts"] else ""] for c in pref["concepts"]]
    table = _grid(rows, st, widths=[70, 24, 18, 18, 20])
    return [*_heading(preference_title(decides), st, then=[intro, table]), intro, table, *_evidence(pref.get("evidence") or [], st)]


def _evidence(evidence: list[dict[str, Any]], st: dict[str, Any]) -> list[Any]:
    """The named concept's pairs the fine-tune moved most towards the risky reply."""
    from reportlab.platypus import Paragraph

    from ._pdf import _grid

    if not evidence:
        return []
    head = Paragraph(escape(f"The pairs of {evidence[0]['concept']} the fine-tune moved most towards the risky reply "
                            "(margin +: the risky reply rose more than the safe one, against the base model)."), st["small"])
    rows = [["prompt", "risky reply", "safe reply", "margin"]] + [
        [e["prompt"], e["risky"], e["safe"], f"{e['margin']:+.3f}"] for e in evidence]
    return [head, _grid(rows, st, widths=[40, 55, 55, 20])]
