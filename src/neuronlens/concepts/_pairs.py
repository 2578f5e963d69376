"""A concept's matched pairs as the model reads them: the prompt (chat-templated) and each reply."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..capture import TokenSequence
from ..probes import prompt_ids
from ._library import Concept


def pair_sequences(tokenizer: Any, concept: Concept) -> tuple[list[TokenSequence], np.ndarray]:
    """Pair by pair, the prompt with its positive reply, then with its negative one (each a
    sequence named after the concept and numbered by its pair), and their labels (1, 0, 1, 0, ...)."""
    seqs, labels = [], []
    for i, pair in enumerate(concept.pairs):
        p = prompt_ids(tokenizer, pair.prompt)
        for text, lab in ((pair.positive, 1), (pair.negative, 0)):
            seqs.append(TokenSequence(concept.name, i, p, tuple(tokenizer(text, add_special_tokens=False)["input_ids"])))
            labels.append(lab)
    return seqs, np.array(labels)
