"""The token sequences an audit reads: templated prompts plus a model's greedy responses,
generated once per (model digest, probe set digest, length) and cached."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from .._cache import load_json_entry, store_json_entry
from ..capture import TokenSequence
from ._chat import generate_greedy, prompt_ids
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
) -> list[TokenSequence]:
    """Prompt + `handle`'s greedy response for every prompt of every set (generating only what
    is not cached; the model loads only if something must be generated)."""
    tok = handle.tokenizer
    out: list[TokenSequence] = []
    for ps in probe_sets:
        p_ids = [prompt_ids(tok, p) for p in ps.prompts]
        key = {
            "model": handle.digest,
            "probe_set": ps.digest,
            "max_new_tokens": max_new_tokens,
            "template": template_digest(tok),
        }
        cached = load_json_entry("responses", key) if use_cache else None
        if cached is not None and len(cached) == len(p_ids):
            responses = [tuple(r) for r in cached]
            if on_batch is not None:
                on_batch(len(responses))
        else:
            responses = generate_greedy(handle.model, tok, p_ids, max_new_tokens, token_budget=token_budget, on_batch=on_batch)
            if use_cache:
                store_json_entry("responses", key, [list(r) for r in responses])
        out.extend(TokenSequence(ps.name, i, p, r) for i, (p, r) in enumerate(zip(p_ids, responses)))
    return out


def decode_response(tokenizer: Any, seq: TokenSequence) -> str:
    return tokenizer.decode(list(seq.response_ids), skip_special_tokens=True)
