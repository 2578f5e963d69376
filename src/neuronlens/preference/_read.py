"""Reading the matched pairs: each reply's mean log-probability per token under one model, and the
margins of a fine-tune against its base from two such reads."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..capture import TokenSequence
from ..concepts import Concept, builtin_concept_names, load_concepts_with_staged, pair_sequences
from ..models import cache_argument, returned_cache
from ._result import EVIDENCE_PAIRS, ConceptMargin, PairEvidence, PreferenceMargins

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
                   advance: Callable[[int], None] | None = None, share_prompts: bool = True,
                   share_prefix: bool = True) -> np.ndarray:
    """Each reply's mean log-probability per token given its prompt, float64 (float32 logits).

    With `share_prompts` (default), the replies of one prompt are read in one row, the prompt once
    (:func:`_packed_logprobs`): a pair's two replies share their prompt, about half of its tokens
    (SmolLM2, one thread: 0.76x the time of one reply per row, benchmarks/preference_cost.py).
    The row's result equals the reply read alone up to float rounding; the first row is read both
    ways and compared, and a model that reads it otherwise (an attention or position scheme the
    packing does not express) is read one reply per row instead, as it is without `share_prompts`.
    With `share_prefix` too (default), the first tokens every prompt shares (a chat template's
    system prompt) are read once into the model's KV cache (:class:`_Prefix`), checked the same way.
    """
    if share_prompts and seqs and _packable(model):
        groups = _prompt_groups(seqs)
        check = groups[0][:2]
        plain = _plain_logprobs(model, [seqs[i] for i in check], pad_id)
        shared = _Prefix.of(model, seqs) if share_prefix else None
        for prefix in dict.fromkeys((shared, None)):  # the shared prefix read once, else in every row
            packed = _packed_logprobs(model, seqs, [check], pad_id, prefix=prefix)
            if np.allclose(packed[check], plain, rtol=0, atol=_PACK_TOLERANCE):
                return _packed_logprobs(model, seqs, groups, pad_id, advance=advance, prefix=prefix)
    return _plain_logprobs(model, seqs, pad_id, advance=advance)


_PACK_TOLERANCE = 2e-3
"""Largest difference (nats per token) between a reply read packed and alone that passes the
check. Measured on SmolLM2 (float32, 132 replies of the rule's pairs): packed and alone differ by
at most 2.5e-6; with the position ids ignored, by 0.40."""


def _packable(model: nn.Module) -> bool:
    """Whether a custom 4D mask and position ids can express the packing: eager or SDPA attention
    (both take a 4D mask as it is) and output embeddings to read the reply positions through."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    out = getattr(model, "get_output_embeddings", None)
    return impl in ("eager", "sdpa") and callable(out) and out() is not None


def _prompt_groups(seqs: Sequence[TokenSequence]) -> list[list[int]]:
    """Indices of the sequences sharing each prompt, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault(s.prompt_ids, []).append(i)
    return list(groups.values())


def _plain_logprobs(model: nn.Module, seqs: Sequence[TokenSequence], pad_id: int, *,
                    advance: Callable[[int], None] | None = None) -> np.ndarray:
    """One reply per row (its prompt before it), rows sorted by length so that padding stays small."""
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


@dataclass(frozen=True)
class _Row:
    """One packed row: the prompt, then each reply, every reply at the positions it has alone (it
    attends to the prompt and to itself, not to the replies before it)."""

    ids: list[int]
    positions: list[int]
    segment: list[int]
    """0 for the prompt, k + 1 for reply k."""
    reads: list[tuple[int, list[int], list[int]]]
    """Per reply: its sequence's index, the row positions whose logits predict its tokens, the tokens."""

    @classmethod
    def build(cls, seqs: Sequence[TokenSequence], group: list[int]) -> _Row:
        prompt = list(seqs[group[0]].prompt_ids)
        p = len(prompt)
        ids, positions, segment, reads = list(prompt), list(range(p)), [0] * p, []
        for k, i in enumerate(group):
            reply = list(seqs[i].response_ids)
            start = len(ids)
            reads.append((i, ([p - 1] + list(range(start, start + len(reply) - 1)))[: len(reply)], reply))
            ids += reply
            positions += range(p, p + len(reply))
            segment += [k + 1] * len(reply)
        return cls(ids, positions, segment, reads)


ROWS = BATCH // 2
"""Packed rows per forward pass (a row holds a pair: about as many tokens as two plain rows)."""


@dataclass(frozen=True)
class _Prefix:
    """The tokens every row starts with (a chat template's system prompt and turn header: 24 of the
    ~130 tokens of a SmolLM2 row), read once into the model's KV cache, which each batch copies."""

    length: int
    cache: Any
    arg: str
    """The forward's name for it (:func:`~neuronlens.models.cache_argument`)."""

    MIN_LENGTH = 8
    """Shorter shared prefixes are read in every row (too little to save for a cache per batch)."""

    @classmethod
    def of(cls, model: nn.Module, seqs: Sequence[TokenSequence]) -> _Prefix | None:
        """The prefix of `seqs`' prompts (each keeps its last prompt token, which predicts its
        reply's first), cached; None when it is short or the model takes no cache."""
        shared = os.path.commonprefix([list(s.prompt_ids) for s in seqs])
        n, arg = min(len(shared), min(len(s.prompt_ids) for s in seqs) - 1), cache_argument(model)
        if n < cls.MIN_LENGTH or arg is None:
            return None
        device = next(model.parameters()).device
        with torch.no_grad():
            cache = returned_cache(model(input_ids=torch.tensor([shared[:n]], device=device), use_cache=True))
        return None if cache is None or not hasattr(cache, "batch_repeat_interleave") else cls(n, cache, arg)

    def for_batch(self, rows: int) -> dict[str, Any]:
        """The forward's keyword for a batch of `rows`: a copy of the cache, one per row."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return {self.arg: cache, "use_cache": True}


def _packed_logprobs(model: nn.Module, seqs: Sequence[TokenSequence], groups: Sequence[list[int]], pad_id: int, *,
                     advance: Callable[[int], None] | None = None, prefix: _Prefix | None = None) -> np.ndarray:
    """The replies of each group read in one row (:class:`_Row`), the logits only where a reply
    token is predicted (the unembedding is a fifth of a 135M model's work per token); with
    `prefix`, the rows' shared first tokens come from its cache instead of being read again."""
    out = np.zeros(len(seqs))
    rows = sorted((_Row.build(seqs, g) for g in groups), key=lambda r: len(r.ids))
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    skip = 0 if prefix is None else prefix.length
    for k in range(0, len(rows), ROWS):
        batch = rows[k:k + ROWS]
        ids, positions, mask = _packed_inputs(batch, pad_id, _mask_dtype(model))
        ids, positions, mask = ids[:, skip:], positions[:, skip:], mask[:, :, skip:]  # queries after the prefix; keys all
        where = [(j, pos - skip) for j, r in enumerate(batch) for _, at, _ in r.reads for pos in at]
        rows_at = torch.tensor([j for j, _ in where], device=device)
        pos_at = torch.tensor([pos for _, pos in where], device=device)
        hook = head.register_forward_pre_hook(lambda _m, args: (args[0][rows_at, pos_at][None],) + tuple(args[1:]))
        try:
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                               **({} if prefix is None else prefix.for_batch(len(batch)))).logits[0]
        finally:
            hook.remove()
        logp = torch.log_softmax(logits.float(), -1)
        start = 0
        for r in batch:
            for i, at, reply in r.reads:
                target = torch.tensor(reply, device=logp.device)[:, None]
                out[i] = logp[start: start + len(at)].gather(-1, target).double().mean().item()
                start += len(at)
        if advance is not None:
            advance(sum(len(r.reads) for r in batch))
    return out


def _mask_dtype(model: nn.Module) -> torch.dtype:
    """SDPA takes a boolean mask (True: attend); eager attention adds the mask to its scores."""
    if model.config._attn_implementation == "sdpa":
        return torch.bool
    return next(model.parameters()).dtype


def _packed_inputs(batch: Sequence[_Row], pad_id: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, position ids and the 4D mask (batch, 1, query, key) of packed rows, right-padded:
    a token attends to the earlier tokens of its prompt and of its own reply; a pad token to itself."""
    width = max(len(r.ids) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    segment = torch.full((len(batch), width), -1, dtype=torch.long)
    for j, r in enumerate(batch):
        n = len(r.ids)
        ids[j, :n], positions[j, :n], segment[j, :n] = torch.tensor(r.ids), torch.tensor(r.positions), torch.tensor(r.segment)
    q, kv = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & (kv >= 0) & ((kv == 0) | (kv == q))
    allowed |= torch.eye(width, dtype=torch.bool)  # pad tokens (and every token) see themselves
    allowed = allowed[:, None]
    if dtype == torch.bool:
        return ids, positions, allowed
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return ids, positions, mask


def margins(pairs: PairSet, ft_lp: np.ndarray, base_lp: np.ndarray) -> PreferenceMargins:
    """Per concept, the float64 sums of its pairs' margins
    ``[lp_ft(risky) - lp_base(risky)] - [lp_ft(safe) - lp_base(safe)]``."""
    d = np.asarray(ft_lp, dtype=np.float64) - np.asarray(base_lp, dtype=np.float64)
    per: dict[str, list[tuple[float, int, bool]]] = {}
    for k in range(0, len(pairs.seqs), 2):
        a, b = (d[k], d[k + 1]) if pairs.risky[k] else (d[k + 1], d[k])
        per.setdefault(pairs.seqs[k].probe_set, []).append((float(a - b), pairs.seqs[k].prompt_index, pairs.risky[k]))
    out = []
    for c in pairs.concepts:
        m = np.array([v for v, _, _ in per.get(c.name, [])], dtype=np.float64)
        out.append(ConceptMargin(c.name, c.label, c.polarity, c.name in pairs.staged, len(m), float(m.sum()), float((m * m).sum())))
    result = PreferenceMargins(tuple(out), pairs.digest)
    named = result.named
    if named is None:
        return result
    concept = next(c for c in pairs.concepts if c.name == named.concept)
    top = sorted(per.get(concept.name, []), key=lambda e: -e[0])[:EVIDENCE_PAIRS]
    return dataclasses.replace(result, evidence=tuple(_evidence(concept, *e) for e in top))


def _evidence(concept: Concept, margin: float, index: int, positive_risky: bool) -> PairEvidence:
    """Pair `index` of `concept` as evidence, its replies oriented as the read oriented them."""
    pair = concept.pairs[index]
    risky, safe = (pair.positive, pair.negative) if positive_risky else (pair.negative, pair.positive)
    return PairEvidence(concept.label, pair.prompt, risky, safe, margin)
