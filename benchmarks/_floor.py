"""The floor every throughput benchmark compares against: a plain Hugging Face forward over the
same batches, stopped after the deepest audited layer, without the LM head (the decoder blocks
run as a truncated ModuleList: no hooks, no SAE)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def truncated(model: torch.nn.Module, n_blocks: int) -> Iterator[torch.nn.Module]:
    """The inner decoder stack of `model` (a PEFT wrapper is looked through) with only its first
    `n_blocks` blocks, restored on exit."""
    inner = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    full = inner.layers
    inner.layers = full[:n_blocks]
    try:
        yield inner
    finally:
        inner.layers = full


@torch.inference_mode()
def floor_pass(model: torch.nn.Module, batches: list, n_blocks: int) -> None:
    """Run `model` over `batches` up to block `n_blocks - 1`, discarding the outputs."""
    with truncated(model, n_blocks) as inner:
        for b in batches:
            inner(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
