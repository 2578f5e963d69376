"""The token sequences an audit reads: templated prompts plus a model's greedy responses,
generated once per (model digest, probe set digest, length) and cached."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._cache import load_json_entry, store_json_entry
from .._memory import release_free_memory
from ..capture import TokenSequence
from ._chat import generate_greedy
from ._length import checked_prompt_ids, handle_context
from ._sets import ProbeSet


def template_digest(tokenizer: Any) -> str:
    return hashlib.sha256(str(getattr(tokenizer, "chat_template", None) or "").encode()).hexdigest()[:16]


def response_sequences(
    handle: Any,
    probe_sets: Sequence[ProbeSet],
    max_new_tokens: int,
    *,
    token_budget: int = 4096,
    use_cache: bool = True,
    on_batch: Callable[[int], None] | None = None,
    shard: tuple[int, int] | None = None,
) -> list[TokenSequence]:
    """Prompt + `handle`'s greedy response for every prompt of every set (generating only what
    is not cached; the model loads only if something must be generated).

    `shard=(rank, world_size)`: only the prompts whose index i in their set has
    i % world_size == rank (a data-parallel audit's share); the sequences keep i as their
    prompt_index. A shard reads the full set's cached responses when they exist, else its own
    entry, and stores what it generates under its own entry (the key names the shard), so a
    sharded run never takes a shard's responses for the whole set or another shard's."""
    tok = handle.tokenizer
    context = handle_context(handle)
    out: list[TokenSequence] = []
    for ps in probe_sets:
        index = shard_indices(len(ps.prompts), shard)
        p_ids = checked_prompt_ids(tok, ps, index, max_new_tokens, context)  # a prompt too long for the model stops here
        key: dict[str, Any] = {
            "model": handle.digest,
            "probe_set": ps.digest,
            "max_new_tokens": max_new_tokens,
            "template": template_digest(tok),
        }
        responses: list[tuple[int, ...]] | None = None
        if len(index) < len(ps.prompts):  # a shard: the full set's entry holds its responses too
            if use_cache and index:
                responses = _full_set_cached(key, index, len(ps.prompts))
            key = {**key, "shard": list(shard or (0, 1))}
        if not index:
            responses = []
        if responses is None and use_cache:
            cached = load_json_entry("responses", key)
            if cached is not None and len(cached) == len(p_ids):
                responses = [tuple(r) for r in cached]
        if responses is not None:
            if on_batch is not None and responses:
                on_batch(len(responses))
        else:
            responses = generate_greedy(handle.model, tok, p_ids, max_new_tokens, token_budget=token_budget, on_batch=on_batch)
            release_free_memory()  # the KV caches' freed blocks would otherwise stay resident (see neuronlens._memory)
            if use_cache:
                store_json_entry("responses", key, [list(r) for r in responses])
        out.extend(TokenSequence(ps.name, i, p, r) for i, p, r in zip(index, p_ids, responses))
    return out


def _full_set_cached(key: dict[str, Any], index: list[int], n: int) -> list[tuple[int, ...]] | None:
    """The shard's responses taken from the full set's cache entry, if there is one."""
    cached = load_json_entry("responses", key)
    return [tuple(cached[i]) for i in index] if cached is not None and len(cached) == n else None


def shard_indices(n: int, shard: tuple[int, int] | None) -> list[int]:
    """Indices of the `n` prompts of a set that belong to `shard=(rank, world_size)` (all if None)."""
    if shard is None:
        return list(range(n))
    rank, world = shard
    return list(range(rank, n, world))


def responses_sha256(seqs: Iterable[TokenSequence]) -> dict[str, str]:
    """Per probe set, the sha256 of the responses a read used, exactly as read: the response token
    ids in prompt order, as compact JSON, ``sha256(b'[[ids of prompt 0],[ids of prompt 1],...]')``
    (``json.dumps(lists, separators=(",", ":"))``). Token ids, not decoded text: they are what the
    model read, and decoding drops special tokens, so two different reads could share one text.

    A response cache entry edited and given a recomputed checksum is still used, but the audit
    that read it then records a different digest than one that read the model's real responses."""
    by_set: dict[str, dict[int, list[int]]] = {}
    for seq in seqs:
        by_set.setdefault(seq.probe_set, {})[seq.prompt_index] = [int(t) for t in seq.response_ids]
    return {
        name: hashlib.sha256(json.dumps([rs[i] for i in sorted(rs)], separators=(",", ":")).encode("ascii")).hexdigest()
        for name, rs in by_set.items()
    }


def decode_response(tokenizer: Any, seq: TokenSequence) -> str:
    return tokenizer.decode(list(seq.response_ids), skip_special_tokens=True)
