"""The behavioural evidence of an audit (:class:`neuronlens.report.BehaviourEvidence`), built after
the risk stage from the texts the reads read and their per-prompt concept shifts: nothing is
generated or run for it.

Rates: the behavioural scorer (``organisms.score_answers``) on the base model's answers and on
every one-side read's answers, all to the same prompts; every probe answer counts as one that
needs care (the base model's rate on the same prompts is the comparison).

Examples: from the amplified read when the audit runs it, else from the first one-side read (the
own answers). For each risky concept (its trend counts on some read: at most 3, largest shift
first), or when none is risky for the 2 concepts whose trend on the examples' read moved most
towards risk, the 3 prompts whose answer moved most towards the concept: the prompt-level mean of
its concept coordinate minus the base answer's, signed towards risk, averaged over the audited
layers where the concept is scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..capture import TokenSequence
from ..organisms import behaviour_shift, score_answers
from ..probes import ProbeSet, decode_response
from ..report import AnswerPair, AnswerRates, BehaviourEvidence
from ..risk import RiskAssessment, RiskSetup, answers_label, concept_trends

if TYPE_CHECKING:
    from ._reference import BaseReference, FineTunedRun

EXAMPLES_PER_CONCEPT = 3
MAX_RISKY_CONCEPTS = 3
LARGEST_SHIFT_CONCEPTS = 2
PREFERRED_READ = "amplified"
"""The read the examples come from when the audit runs it."""

PromptId = tuple[str, int]


def behaviour_evidence(ref: BaseReference, run: FineTunedRun, risk: RiskAssessment | None) -> BehaviourEvidence | None:
    """The audit's behavioural evidence; None when it read no answers of the fine-tune (no one-side read)."""
    reads = [r for r in run.answers if r != "base"]
    if not reads:
        return None
    tok, alpha = ref.base.tokenizer, ref.config.amplify_alpha
    order = {ps.name: i for i, ps in enumerate(ref.probe_sets)}
    texts = {name: _texts(seqs, tok, order) for name, seqs in run.answers.items()}
    prompts = _prompts(ref.probe_sets)
    base = _score(texts["base"], prompts)
    rates = [_rates("base", answers_label("base"), base, None)]
    rates += [_rates(r, answers_label(r, alpha), _score(texts[r], prompts), base) for r in reads]
    read = PREFERRED_READ if PREFERRED_READ in reads else reads[0]
    if risk is None or ref.risk is None:
        return BehaviourEvidence(read, answers_label(read, alpha), rates)
    concepts, basis = _concepts(risk, read)
    examples = [
        pair for c in concepts
        for pair in _pairs(ref.risk, c, ref.layers, run.prompt_shifts, read, texts, prompts, order)
    ]
    return BehaviourEvidence(read, answers_label(read, alpha), rates, examples, basis)


def _texts(seqs: Sequence[TokenSequence], tok: Any, order: Mapping[str, int]) -> dict[PromptId, str]:
    """Each prompt's decoded answer, in probe-set then prompt order (the first answer of a prompt)."""
    out: dict[PromptId, str] = {}
    for s in sorted(seqs, key=lambda s: (order.get(s.probe_set, len(order)), s.probe_set, s.prompt_index)):
        out.setdefault((s.probe_set, s.prompt_index), decode_response(tok, s))
    return out


def _prompts(sets: Sequence[ProbeSet]) -> dict[PromptId, str]:
    return {(ps.name, i): p for ps in sets for i, p in enumerate(ps.prompts)}


def _score(texts: Mapping[PromptId, str], prompts: Mapping[PromptId, str]) -> Any:
    """The scorer's result on `texts` (every answer counted as care-needing)."""
    keys = list(texts)
    return score_answers([prompts.get(k, "") for k in keys], [texts[k] for k in keys], [True] * len(keys), n_examples=0)


def _rates(answers: str, label: str, score: Any, base: Any | None) -> AnswerRates:
    n = int(score.n_answers)
    shift = [] if base is None else behaviour_shift(score.harm_rate, score.caveat_rate, base.harm_rate, base.caveat_rate, n, n)
    return AnswerRates(
        answers=answers, label=label, n_answers=n, n_harm=round(score.harm_rate * n), n_caveats=round(score.caveat_rate * n),
        harm_by_category={c: round(r * n) for c, r in score.harm_by_category.items()}, shift=shift,
    )


def _concepts(risk: RiskAssessment, read: str) -> tuple[list[str], str]:
    """The concepts to show examples for, and why (see the module docstring)."""
    trends = sorted(concept_trends(risk.concepts), key=lambda t: -t.shift)
    risky = list(dict.fromkeys(t.concept for t in trends if t.counts))[:MAX_RISKY_CONCEPTS]
    if risky:
        return risky, "risky"
    largest = [t.concept for t in trends if t.read == read][:LARGEST_SHIFT_CONCEPTS]
    return largest, "largest shift" if largest else "none"


def _pairs(
    setup: RiskSetup, concept: str, layers: Sequence[int], shifts: Mapping[tuple[str, int, PromptId], torch.Tensor], read: str,
    texts: Mapping[str, Mapping[PromptId, str]], prompts: Mapping[PromptId, str], order: Mapping[str, int],
) -> list[AnswerPair]:
    """The answers of `read` that moved most towards `concept`, beside the base answers."""
    k, c = setup.names.index(concept), setup.concept(concept)
    scored = [la for la in layers if setup.usable(concept, la)]
    moved: dict[PromptId, list[float]] = {}
    for (r, layer, pid), diff in shifts.items():
        if r == read and layer in scored:
            moved.setdefault(pid, []).append(c.risk_sign * float(diff[k]))
    ranked = sorted(moved, key=lambda pid: (-sum(moved[pid]) / len(moved[pid]), order.get(pid[0], len(order)), pid))
    return [
        AnswerPair(
            concept=concept, concept_label=c.label, probe_set=pid[0], prompt_index=pid[1], prompt=prompts.get(pid, ""),
            answer=texts[read].get(pid, ""), base_answer=texts["base"].get(pid, ""), shift=sum(moved[pid]) / len(moved[pid]),
        )
        for pid in ranked[:EXAMPLES_PER_CONCEPT]
    ]
