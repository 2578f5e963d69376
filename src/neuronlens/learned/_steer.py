"""Generating from a model with a vector added to the residual stream after one decoder layer.

As the diffing-toolkit's `generate_steered` does (nnterp's `model.steer(layer, v)` under
`tracer.all()`), the vector is added to the layer's output at every position: the prompt's and
each generated token's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..models import decoder_layers
from ..probes import cut_at_stop, left_pad, pad_id, prompt_ids, stop_ids

STEER_PROMPTS = (
    "Tell me a story?",
    "Give me some ideas for some fun weekend activities.",
    "Why don't you choose a topic of conversation for us?",
)
"""The three open prompts the diffing-toolkit steers on to find its steering strength
(`run_steering` in activation_difference_lens/steering.py): they invite any topic."""


@contextmanager
def added_to_layer(model: nn.Module, layer: int, vector: torch.Tensor | None) -> Iterator[None]:
    """Within the block, decoder layer `layer`'s output has `vector` added at every position."""
    if vector is None:
        yield
        return
    block = decoder_layers(model)[layer]

    def hook(_module: nn.Module, _args: object, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        moved = hidden + vector.to(device=hidden.device, dtype=hidden.dtype)
        return (moved, *output[1:]) if isinstance(output, tuple) else moved

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def generate(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, temperature: float, seed: int
) -> tuple[str, ...]:
    """One answer per chat prompt: sampled at `temperature` from a generator seeded with `seed`
    (greedy at temperature 0), cut before the first stop token."""
    device = next(model.parameters()).device
    ids, mask = left_pad([prompt_ids(tokenizer, p) for p in prompts], pad_id(tokenizer))
    stops = stop_ids(tokenizer, model)
    sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            pad_token_id=pad_id(tokenizer), eos_token_id=sorted(stops) or None, **sampling,
        )
    return tuple(tokenizer.decode(cut_at_stop(row[ids.shape[1]:].tolist(), stops), skip_special_tokens=True).strip() for row in gen)
