"""The preference read: does the fine-tune prefer the risky reply of the concept library's matched
pairs more than its base model does?

Per pair (a prompt, a reply that expresses the concept, one that does not), each model's mean
log-probability per reply token of both replies, and the margin
``[lp_ft(risky) - lp_base(risky)] - [lp_ft(safe) - lp_base(safe)]`` (nats per token): a change both
replies share (a dialect, a register, a domain) cancels. Nothing is generated. It is rule 2's
measurement (docs/PREREGISTRATION_RULE2.md), reported beside the verdict as evidence; it does not
decide the verdict until rule 2 has met issue #18's gate on zoos it was not chosen on.

    pairs = PairSet.build(base.tokenizer)
    m = margins(pairs, reply_logprobs(ft_nn, pairs.seqs, pad), reply_logprobs(base_nn, pairs.seqs, pad))
"""

from ._read import BATCH, PairSet, margins, reply_logprobs, rule_library
from ._result import ALPHA, EVIDENCE_PAIRS, METHOD, TAU, ConceptMargin, PairEvidence, PreferenceMargins, t_critical

__all__ = [
    "ALPHA",
    "BATCH",
    "EVIDENCE_PAIRS",
    "METHOD",
    "TAU",
    "ConceptMargin",
    "PairEvidence",
    "PairSet",
    "PreferenceMargins",
    "margins",
    "reply_logprobs",
    "rule_library",
    "t_critical",
]
