"""How the verdict and the reports name the audit's reads, and which of them decide the score.

The reads themselves are registered by the pipeline (``neuronlens.pipeline.ONE_SIDE_READS``);
'amplified' is named with its amplification strength, since the same fine-tune reads differently
at another alpha.
"""

from __future__ import annotations

from collections.abc import Iterable

_ANSWERS = {"base": "base model's greedy answers", "own": "fine-tune's own greedy answers", "same": "base model's answers (both models)"}


def answers_label(read: str, alpha: float | None = None) -> str:
    """How reports name the answers read `read` read: "fine-tune's own greedy answers",
    "amplified answers (α=1)", ... ('base': the base model's own answers)."""
    if read == "amplified":
        return "amplified answers" + ("" if alpha is None else f" (\u03b1={alpha:g})")
    return _ANSWERS.get(read, f"{read} answers")


def read_phrase(read: str, alpha: float | None = None) -> str:
    """How a reason or note names read `read`: 'own read', 'same read', and for the amplified read
    its answers with their alpha ("amplified answers (α=1)")."""
    return answers_label(read, alpha) if read == "amplified" else f"{read} read"


def scored(reads: Iterable[str], score_reads: Iterable[str]) -> list[str]:
    """The reads of `reads` whose concept trends decide the score (those listed in score_reads)."""
    wanted = set(score_reads)
    return [r for r in reads if r in wanted]
