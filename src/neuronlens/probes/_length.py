"""Probe prompts against the model's context length: a prompt that does not fit, with the
response budget, is refused by name before anything is generated.

Without the check a prompt longer than the context fails deep inside the forward pass (an
IndexError from learned position embeddings) or silently reads positions the model never saw
(rotary ones), and a 10 MB prompt ran out of memory after a minute (issue #21).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import is_int
from ..errors import ProbeError
from ._chat import prompt_ids
from ._sets import ProbeSet

CHARS_PER_TOKEN = 8
"""Characters of a prompt tokenised before its length is known to exceed the context: only this
many per context token are read, so a 10 MB prompt costs no more than a long one (tokenising 10 MB
took 8.4 s with SmolLM2's tokenizer on this machine). It only bounds the cost, never the verdict:
text denser than this (SmolLM2's longest token is 81 characters of '#') is tokenised whole.
English prose averages 4.4 characters per SmolLM2 token, Python source 3.6 (measured on the
built-in probe sets and on this package's code)."""

_CONFIG_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
"""Config fields that hold a model's context length (Llama/Mistral/Qwen/Gemma, GPT-2, others)."""
_NO_LIMIT = 10**9
"""transformers' tokenizers say "no limit" with a huge model_max_length (int(1e30)); no model has a
billion-token context."""
_SHOWN = 5


def context_length(config: Any, tokenizer: Any = None) -> tuple[int, str] | None:
    """(tokens, where it comes from) of the longest sequence the model reads: the config's
    position limit (of its text model, for a multimodal config), else the tokenizer's
    model_max_length when it states one; None when neither does."""
    cfg = getattr(config, "text_config", None) or config
    for name in _CONFIG_FIELDS:
        value = getattr(cfg, name, None)
        if is_int(value) and value > 0:
            return int(value), f"the model config's {name}"
    value = getattr(tokenizer, "model_max_length", None)
    if is_int(value) and 0 < value < _NO_LIMIT:
        return int(value), "the tokenizer's model_max_length"
    return None


def handle_context(handle: Any) -> tuple[int, str] | None:
    """:func:`context_length` of a model handle (its config is read without loading weights) or
    of any object with a loaded `model` and a `tokenizer`."""
    config = getattr(handle, "config", None)
    if config is None:
        config = getattr(getattr(handle, "model", None), "config", None)
    return context_length(config, getattr(handle, "tokenizer", None))


def checked_prompt_ids(
    tokenizer: Any, ps: ProbeSet, index: Sequence[int], max_new_tokens: int, context: tuple[int, str] | None
) -> list[tuple[int, ...]]:
    """The templated token ids of prompts `index` of `ps`; raises :class:`ProbeError` naming every
    prompt that, with `max_new_tokens` response tokens, does not fit the `context` (None: no known
    limit, nothing checked)."""
    if context is None:
        return [prompt_ids(tokenizer, ps.prompts[i]) for i in index]
    limit = context[0]
    out: list[tuple[int, ...]] = []
    too_long: list[tuple[int, int, bool]] = []
    for i in index:
        n_known, ids = _length(tokenizer, ps.prompts[i], limit)
        if n_known + max_new_tokens > limit:
            too_long.append((i, n_known, ids is None))
        out.append(ids or ())
    if too_long:
        raise _too_long_error(ps, too_long, max_new_tokens, context)
    return out


def _length(tokenizer: Any, prompt: str, limit: int) -> tuple[int, tuple[int, ...] | None]:
    """(token count, ids) of the templated prompt; when a prefix of CHARS_PER_TOKEN x `limit`
    characters already exceeds `limit` tokens: (that prefix's count, None), without tokenising
    the rest."""
    bound = CHARS_PER_TOKEN * limit
    if len(prompt) > bound:
        n_prefix = len(prompt_ids(tokenizer, prompt[:bound]))
        if n_prefix > limit:
            return n_prefix, None
    ids = prompt_ids(tokenizer, prompt)
    return len(ids), ids


def _too_long_error(
    ps: ProbeSet, too_long: list[tuple[int, int, bool]], max_new_tokens: int, context: tuple[int, str]
) -> ProbeError:
    limit, source = context
    items = []
    for i, n, partial in too_long[:_SHOWN]:
        line = f", line {ps.lines[i]}" if ps.lines is not None else ""
        size = (
            f"{len(ps.prompts[i]):,} characters, whose first {CHARS_PER_TOKEN * limit:,} alone are {n:,} tokens" if partial
            else f"{n:,} tokens"
        )
        items.append(f"prompt {i + 1}{line}: {size}")
    more = f" and {len(too_long) - _SHOWN} more" if len(too_long) > _SHOWN else ""
    where = "the built-in set" if ps.source == "builtin" else ps.source
    them = "that prompt" if len(too_long) == 1 else "those prompts"
    if all(not partial and n < limit for _, n, partial in too_long):  # each fits alone: the response budget is the problem
        fix = (
            f"Lower the response budget to at most {limit - max(n for _, n, _ in too_long)} tokens (--max-new-tokens; "
            f"max_new_tokens=), or shorten {them}"
        )
    elif ps.source == "builtin":
        fix = f"Audit a model with a longer context, or leave out the built-in set {ps.name!r}"
    else:
        fix = (
            f"Shorten {them} to at most {max(limit - max_new_tokens, 0):,} tokens (the context less the {max_new_tokens} "
            f"response tokens), or drop {'it' if len(too_long) == 1 else 'them'} from {where}"
        )
    return ProbeError(
        f"Probe set {ps.name!r} ({where}): {len(too_long)} prompt(s) do not fit the model's context of {limit:,} tokens "
        f"({source}) with the {max_new_tokens} response tokens (max_new_tokens), after the chat template: "
        f"{'; '.join(items)}{more}.",
        fix + ".",
    )
