"""Token sequences of the screen: each assistant turn of an example, read in its chat-templated
context, cut to the screen's limit without tokenising more of a long text than the limit needs
(:func:`turn_sequences`), and the examples of a data file turned into those sequences.
"""

from __future__ import annotations

from typing import Any

from ..capture import TokenSequence
from ..probes import CHARS_PER_TOKEN
from ._screen_data import SkippedLine, _clip, _Example


def _context_ids(tokenizer: Any, messages: list[dict[str, str]], n: int) -> tuple[tuple[int, ...], bool]:
    """The last `n` tokens of the conversation before an assistant turn, as the model sees it when
    it starts replying, and whether earlier ones were cut."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) if messages else ""
        ids, cut = _tail_ids(tokenizer, text, n, add_special_tokens=False)
        if ids:
            return ids, cut
    text = "".join(f"{m['content']}\n" for m in messages)
    ids, cut = _tail_ids(tokenizer, text, n, add_special_tokens=True)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return ids or ((int(bos),) if bos is not None else ()), cut


def _head_ids(tokenizer: Any, text: str, n: int) -> tuple[tuple[int, ...], bool]:
    """The first `n` tokens of `text` and whether it has more. Only CHARS_PER_TOKEN x `n`
    characters are tokenised when they already hold more than `n` tokens (a megabyte-long reply
    costs no more than a long one); the token cut at that boundary is never kept."""
    bound = CHARS_PER_TOKEN * n
    if len(text) > bound:
        ids = tuple(tokenizer(text[:bound], add_special_tokens=False)["input_ids"])
        if len(ids) > n:
            return ids[:n], True
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[:n], len(ids) > n


def _tail_ids(tokenizer: Any, text: str, n: int, *, add_special_tokens: bool) -> tuple[tuple[int, ...], bool]:
    """The last `n` tokens of `text` and whether earlier ones were cut (tokenising only its last
    CHARS_PER_TOKEN x `n` characters when they already hold more than `n` tokens)."""
    bound = CHARS_PER_TOKEN * n
    if len(text) > bound:
        ids = tuple(tokenizer(text[-bound:], add_special_tokens=add_special_tokens)["input_ids"])
        if len(ids) > n:
            return ids[-n:], True
    ids = tuple(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    return ids[-n:], len(ids) > n


def turn_sequences(tokenizer: Any, ex_index: int, ex: _Example, max_tokens: int) -> tuple[list[TokenSequence], bool]:
    """One sequence of at most `max_tokens` per assistant turn (context + the turn's tokens), and
    whether any turn or its context was cut to fit; `prompt_index` carries the example's index so
    that tokens of all its turns are pooled."""
    out = []
    cut = False
    for i, m in enumerate(ex.messages):
        if m["role"] != "assistant" or not m["content"].strip():
            continue
        reply, reply_cut = _head_ids(tokenizer, m["content"], max_tokens - 1)
        context, context_cut = _context_ids(tokenizer, ex.messages[:i], max(1, max_tokens - len(reply)))
        cut = cut or reply_cut or context_cut
        if reply:
            out.append(TokenSequence("screen", ex_index, context, reply))
    return out, cut


def example_sequences(
    tok: Any, examples: list[_Example], max_tokens: int
) -> tuple[list[TokenSequence], list[_Example], set[int], list[SkippedLine]]:
    """The sequences of every example that can be read (:func:`turn_sequences`; `prompt_index`
    numbers the examples kept), the examples kept, the indices (among those kept) of the ones cut
    to fit, and the examples that could not be read, each with its reason."""
    seqs: list[TokenSequence] = []
    kept: list[_Example] = []
    truncated: set[int] = set()
    template_bad: list[SkippedLine] = []
    for ex in examples:
        try:
            turns, cut = turn_sequences(tok, len(kept), ex, max_tokens)
        except Exception as exc:  # noqa: BLE001 - a chat template may reject any conversation shape
            template_bad.append(SkippedLine(ex.line, f"the base model's chat template rejects it ({type(exc).__name__}: {_clip(str(exc), 200)})"))
            continue
        if not turns:
            template_bad.append(SkippedLine(ex.line, "its assistant turns hold no tokens"))
            continue
        seqs.extend(turns)
        if cut:
            truncated.add(len(kept))
        kept.append(ex)
    return seqs, kept, truncated, template_bad
