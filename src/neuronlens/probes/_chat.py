"""Turning prompts into token ids the way a chat model sees them, and generating responses."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import torch
from torch import nn


def prompt_ids(tokenizer: Any, prompt: str) -> tuple[int, ...]:
    """The prompt as the model sees it at inference: the chat template with the generation
    prompt appended when the tokenizer has one, else the raw text with special tokens."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    return tuple(tokenizer(prompt + "\n", add_special_tokens=True)["input_ids"])


def stop_ids(tokenizer: Any, model: nn.Module | None = None) -> set[int]:
    """Token ids that end a response (EOS and the chat template's end-of-turn token)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if isinstance(tid, int):
            ids.add(tid)
    return ids


@torch.inference_mode()
def generate_greedy(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[tuple[int, ...]],
    max_new_tokens: int,
    *,
    token_budget: int = 4096,
    on_batch: Callable[[int], None] | None = None,
) -> list[tuple[int, ...]]:
    """Greedy responses (token ids, cut before the first stop token) to templated prompt ids.
    Prompts are left-padded and batched by length so that batch x (prompt + new tokens) stays
    within `token_budget`."""
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    stops = stop_ids(tokenizer, model)
    out: list[tuple[int, ...]] = [()] * len(prompts)
    for idx in length_batches([len(p) for p in prompts], max_new_tokens, token_budget):
        ids, mask = left_pad([prompts[j] for j in idx], pad)
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=sorted(stops) or None,
        )
        for r, j in enumerate(idx):
            out[j] = cut_at_stop(gen[r, ids.shape[1] :].tolist(), stops)
        if on_batch is not None:
            on_batch(len(idx))
    return out


def pad_id(tokenizer: Any) -> int:
    """The id prompts are left-padded with: the pad token, else the end-of-sequence token."""
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


MAX_BATCH = 64
"""The most prompts generated in one batch, whatever the token budget allows."""


def length_batches(lengths: Sequence[int], max_new_tokens: int, token_budget: int) -> Iterator[list[int]]:
    """Prompt indices, longest first, in batches whose rows x (longest prompt + new tokens) stay
    within `token_budget` (at least one prompt, at most MAX_BATCH)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    i = 0
    while i < len(order):
        size = max(1, min(MAX_BATCH, token_budget // (lengths[order[i]] + max_new_tokens)))
        yield order[i : i + size]
        i += size


def left_pad(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, longest] ids left-padded with `pad`, and the attention mask (1 on real tokens)."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, longest - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[r, longest - len(p) :] = 1
    return ids, mask


def cut_at_stop(tokens: Sequence[int], stops: Collection[int]) -> tuple[int, ...]:
    """`tokens` up to (not including) the first stop token."""
    cut = next((t for t, tok in enumerate(tokens) if tok in stops), len(tokens))
    return tuple(tokens[:cut])
