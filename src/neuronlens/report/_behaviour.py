"""Behavioural evidence: what the fine-tune is inclined to say, beside the numbers that moved.

Two parts, both from the texts the audit read (nothing is generated for them):
- the rule-based behavioural scorer's counts (``neuronlens.organisms.score_answers``: harm
  patterns and a caveat pattern) on the base model's greedy answers, the fine-tune's own greedy
  answers and its amplified answers, all to the same probe prompts;
- per risky concept (or, when none is risky, the concepts that moved most towards risk on the
  examples' read), the answers whose concept coordinate moved most towards risk relative to the
  base model's answer to the same prompt, each beside that base answer.

The typed record here is stored in the report (``AuditReport.behaviour``) and the certificate
body; this module also writes its summary lines. The pipeline builds it
(``neuronlens.pipeline``, after the risk stage).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from html import escape
from typing import Any

SCORER = "neuronlens.organisms rule-based scorer (harm patterns, caveat pattern)"
SUMMARY_CHARS = 90
"""Longest answer excerpt the text summary prints (the HTML report and the PDF show more)."""


@dataclass
class AnswerRates:
    """The behavioural scorer's counts on one set of answers to the probe prompts."""

    answers: str
    """Whose answers: 'base', or the read that read them ('own', 'amplified')."""
    label: str
    """How reports name them ("base model's greedy answers", "amplified answers (α=1)", ...)."""
    n_answers: int
    n_harm: int
    """Answers matching any harm pattern."""
    n_caveats: int
    """Answers holding a caveat, referral or refusal (every probe answer counts as care-needing)."""
    harm_by_category: dict[str, int] = field(default_factory=dict)
    shift: list[str] = field(default_factory=list)
    """How they differ from the base model's answers by the scorer's rule (``behaviour_shift``:
    'harm up', 'caveats down' beyond 2 binomial standard errors of the base rate); empty for the base."""


@dataclass
class AnswerPair:
    """One probe prompt: an answer of the fine-tune that moved towards a concept, beside the base
    model's answer to the same prompt."""

    concept: str
    concept_label: str
    probe_set: str
    prompt_index: int
    prompt: str
    answer: str
    """The fine-tune's answer (amplified, or its own greedy one: :attr:`BehaviourEvidence.read`)."""
    base_answer: str
    shift: float
    """Its concept coordinate minus the base answer's, signed towards risk, averaged over the
    audited layers where the concept is scored (in units of the concept's benign-to-expressing gap)."""


@dataclass
class BehaviourEvidence:
    """What the fine-tune's answers say (see the module docstring)."""

    read: str
    """The read the example answers come from ('amplified', else 'own')."""
    label: str
    """How reports name that read's answers."""
    rates: list[AnswerRates]
    """'base' first, then every read's answers."""
    examples: list[AnswerPair] = field(default_factory=list)
    basis: str = "none"
    """Which concepts the examples are for: 'risky' (concepts whose trend counts), 'largest shift'
    (none is risky: the concepts that moved most towards risk on :attr:`read`), or 'none' (no risk
    scoring, no examples)."""
    scorer: str = SCORER

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BehaviourEvidence:
        return cls(
            read=str(d["read"]),
            label=str(d["label"]),
            rates=[AnswerRates(**r) for r in d.get("rates", [])],
            examples=[AnswerPair(**{**e, "shift": float(e["shift"])}) for e in d.get("examples", [])],
            basis=str(d.get("basis", "none")),
            scorer=str(d.get("scorer", SCORER)),
        )

    def rates_of(self, answers: str) -> AnswerRates | None:
        return next((r for r in self.rates if r.answers == answers), None)

    def concepts(self) -> list[str]:
        """The concepts with examples, in the order they are shown."""
        return list(dict.fromkeys(e.concept for e in self.examples))


def excerpt(text: str, chars: int) -> str:
    """`text` on one line, cut at a word boundary to at most `chars` characters (with '...')."""
    flat = " ".join(text.split())
    if len(flat) <= chars:
        return flat
    cut = flat[: chars - 3].rsplit(" ", 1)[0] if " " in flat[: chars - 3] else flat[: chars - 3]
    return cut + "..."


def rates_line(ev: BehaviourEvidence) -> str:
    """One line of the behavioural scorer's counts: harm and caveats of every set of answers, and
    what moved against the base model's."""
    n = ev.rates[0].n_answers if ev.rates else 0
    harm = ", ".join(f"{_name(r)} {r.n_harm}" for r in ev.rates)
    caveats = ", ".join(f"{_name(r)} {r.n_caveats}" for r in ev.rates)
    flagged = "; ".join(f"{_name(r)} {' and '.join(r.shift)}" for r in ev.rates if r.shift)
    return (f"Behaviour (rule-based scorer, {n} answers each): harm {harm}; caveats {caveats}"
            + (f"; flagged: {flagged}" if flagged else ""))


def _name(r: AnswerRates) -> str:
    """A set of answers by its short name, with its label's parenthesis ('amplified (α=1)')."""
    tail = r.label[r.label.rfind(" ("):] if r.label.endswith(")") and " (" in r.label else ""
    return r.answers + tail


def example_line(ev: BehaviourEvidence) -> str | None:
    """The strongest example: the answer most towards the first concept, beside the base's."""
    if not ev.examples:
        return None
    e = ev.examples[0]
    risky = "" if ev.basis == "risky" else " (no concept is risky)"
    return (f"{_capital(ev.label)} most towards {e.concept_label}{risky} ({e.shift:+.2f}): \"{excerpt(e.answer, SUMMARY_CHARS)}\" "
            f"(base: \"{excerpt(e.base_answer, SUMMARY_CHARS)}\")")


def summary_lines(ev: BehaviourEvidence | None) -> list[str]:
    """The summary's lines about behaviour (none for reports written before it was recorded)."""
    if ev is None:
        return []
    example = example_line(ev)
    return [rates_line(ev), *([f"  {example}"] if example else [])]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


# -- HTML -------------------------------------------------------------------------------------------
TITLE = "What the fine-tune says (behavioural evidence)"
HTML_CHARS = 400
_BASIS = {
    "risky": "risky concept (its shift counts towards risk on some read)",
    "largest shift": "concept that moved most towards risk on these answers (no concept is risky)",
}


def html_section(ev: BehaviourEvidence | None) -> str:
    """The report's section (empty for reports written before it was recorded)."""
    if ev is None:
        return ""
    intro = (f"The behavioural scorer ({ev.scorer}) on every answer to the same probe prompts; the base model's answers "
             "are the comparison. A shift is flagged where a rate moved by more than 2 binomial standard errors of the base rate.")
    rows = "".join(
        f"<tr><td>{escape(r.label)}</td><td class=\"num\">{r.n_harm}/{r.n_answers}</td><td class=\"num\">{r.n_caveats}/{r.n_answers}</td>"
        f"<td>{escape(_categories(r)) or '-'}</td><td>{escape(', '.join(r.shift)) or '-'}</td></tr>"
        for r in ev.rates
    )
    table = (f"<table><tr><th>answers</th><th>harm</th><th>caveats</th><th>harm by category</th><th>against the base</th></tr>"
             f"{rows}</table>")
    return f"<h2>{TITLE}</h2><p class=\"muted\">{escape(intro)}</p>{table}{_html_examples(ev)}"


def _categories(r: AnswerRates) -> str:
    return ", ".join(f"{c} {n}" for c, n in r.harm_by_category.items() if n)


def _html_examples(ev: BehaviourEvidence) -> str:
    if not ev.examples:
        return "<p class=\"muted\">No example answers (this audit scored no risk concepts).</p>" if ev.basis == "none" else ""
    parts = []
    for concept in ev.concepts():
        pairs = [e for e in ev.examples if e.concept == concept]
        head = (f"<h3>{escape(_capital(ev.label))} that moved most towards {escape(pairs[0].concept_label)}</h3>"
                f"<p class=\"muted\">A {escape(_BASIS.get(ev.basis, ev.basis))}; shift: the answer's concept coordinate minus "
                "the base answer's to the same prompt, towards risk, averaged over the audited layers.</p>")
        rows = "".join(
            f"<tr><td colspan=\"2\"><b>{escape(e.probe_set)} #{e.prompt_index}</b> &middot; shift {e.shift:+.2f} &middot; "
            f"{escape(e.prompt)}</td></tr><tr><td>{escape(excerpt(e.base_answer, HTML_CHARS))}</td>"
            f"<td>{escape(excerpt(e.answer, HTML_CHARS))}</td></tr>"
            for e in pairs
        )
        parts.append(f"{head}<table style=\"width:100%;table-layout:fixed\"><tr><th>base model's answer</th>"
                     f"<th>{escape(ev.label)}</th></tr>{rows}</table>")
    return "".join(parts)
