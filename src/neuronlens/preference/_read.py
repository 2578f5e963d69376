"""Reading the matched pairs: each reply's mean log-probability per token under one model, and the
margins of a fine-tune against its base from two such reads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..capture import TokenSequence
from ..concepts import Concept, builtin_concept_names, load_concepts_with_staged, pair_sequences
from ._result import ConceptMargin, PreferenceMargins

BATCH = 16
"""Replies per forward pass, sorted by length so that padding stays small."""


def rule_library() -> list[Concept]:
    """Rule 2's concepts: the built-in ones, then the staged ones (written for the probe domains,
    not loaded by the SAE read)."""
    return load_concepts_with_staged()


@dataclass(frozen=True)
class PairSet:
    """Every pair's two replies as token sequences (positive, then negative, as ``pair_sequences``
    orders them), and per reply its concept and whether it is the risky side (for a protective
    concept, the reply without the protection)."""

    seqs: tuple[TokenSequence, ...]
    risky: tuple[bool, ...]
    concepts: tuple[Concept, ...]
    staged: frozenset[str]

    @classmethod
    def build(cls, tokenizer: Any, library: Sequence[Concept] | None = None) -> PairSet:
        library = list(rule_library() if library is None else library)
        builtin = set(builtin_concept_names())
        seqs: list[TokenSequence] = []
        risky: list[bool] = []
        for c in library:
            s, labels = pair_sequences(tokenizer, c)
            seqs += s
            risky += [bool(lab) == (c.polarity == "harmful") for lab in labels]
        return cls(tuple(seqs), tuple(risky), tuple(library), frozenset(c.name for c in library if c.name not in builtin))

    @property
    def digest(self) -> str:
        """sha256 prefix of every reply's token ids (what a cached read depends on)."""
        return hashlib.sha256(json.dumps([s.ids for s in self.seqs]).encode()).hexdigest()[:16]


def reply_logprobs(model: nn.Module, seqs: Sequence[TokenSequence], pad_id: int, *,
                   advance: Callable[[int], None] | None = None) -> np.ndarray:
    """Each reply's mean log-probability per token given its prompt, float64 (float32 logits)."""
    out = np.zeros(len(seqs))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    device = next(model.parameters()).device
    for k in range(0, len(order), BATCH):
        idx = order[k:k + BATCH]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, : len(seqs[i])] = torch.tensor(seqs[i].ids)
            mask[j, : len(seqs[i])] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for j, i in enumerate(idx):
            p, r = len(seqs[i].prompt_ids), len(seqs[i].response_ids)
            logp = torch.log_softmax(logits[j, p - 1: p - 1 + r].float(), -1)
            target = torch.tensor(seqs[i].response_ids, device=logp.device)[:, None]
            out[i] = logp.gather(-1, target).double().mean().item()
        if advance is not None:
            advance(len(idx))
    return out


def margins(pairs: PairSet, ft_lp: np.ndarray, base_lp: np.ndarray) -> PreferenceMargins:
    """Per concept, the float64 sums of its pairs' margins
    ``[lp_ft(risky) - lp_base(risky)] - [lp_ft(safe) - lp_base(safe)]``."""
    d = np.asarray(ft_lp, dtype=np.float64) - np.asarray(base_lp, dtype=np.float64)
    per: dict[str, list[float]] = {}
    for k in range(0, len(pairs.seqs), 2):
        a, b = (d[k], d[k + 1]) if pairs.risky[k] else (d[k + 1], d[k])
        per.setdefault(pairs.seqs[k].probe_set, []).append(float(a - b))
    out = []
    for c in pairs.concepts:
        m = np.array(per.get(c.name, []), dtype=np.float64)
        out.append(ConceptMargin(c.name, c.label, c.polarity, c.name in pairs.staged, len(m), float(m.sum()), float((m * m).sum())))
    return PreferenceMargins(tuple(out), pairs.digest)
