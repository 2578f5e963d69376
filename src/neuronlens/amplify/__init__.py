"""Model-diff amplification: the fine-tuned model's answers generated from
``logits_ft + alpha * (logits_ft - logits_base)``, so that what fine-tuning changed shows in the
text more strongly than in its greedy answers (Aranguri & McGrath, Goodfire 2025).

    from neuronlens.amplify import amplified_responses
    seqs = amplified_responses(base, ft, load_probe_set("finance", 8), alpha=2.0, max_new_tokens=48)

A stage of its own: it reads two :class:`neuronlens.models.ModelHandle` s and probe sets and
returns token sequences (cached). The audit's 'amplified' read (``neuronlens.pipeline``) calls
:func:`resident_amplified_responses` on the models it holds resident (``module_pair``), under the
same cache keys, so the two share answers. A LoRA adapter on the
base keeps one model resident and runs both sides in one mixed-adapter batch per step (1.39x the
own-response generation on SmolLM2-135M, benchmarks/amplify_cost.py); a full checkpoint keeps both
models resident during the generation.
"""

from ._api import AmplifiedSequence, amplified_responses, resident_amplified_responses
from ._decode import Pair
from ._settings import AmplifySettings
from ._sides import STRATEGIES, check_pair, module_pair, supports_mixed_batch, tokenizer_digest

__all__ = [
    "STRATEGIES",
    "AmplifiedSequence",
    "AmplifySettings",
    "Pair",
    "amplified_responses",
    "check_pair",
    "module_pair",
    "resident_amplified_responses",
    "supports_mixed_batch",
    "tokenizer_digest",
]
