"""Collect residual activations of a model over many sequences (for SAE training and for
measuring concept associations)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._hooks import run_to_layers
from ._select import gather, massive_keep
from ._sequences import TokenSequence, make_batches


@dataclass
class Collected:
    acts: dict[int, torch.Tensor]
    """layer -> [n_tokens, d_model] float32 (massive-activation tokens removed)."""
    seq_index: dict[int, torch.Tensor]
    """layer -> [n_tokens] index into the input sequence list."""


def collect_activations(
    model: nn.Module,
    seqs: Sequence[TokenSequence],
    layers: Sequence[int],
    *,
    positions: str = "all",
    token_budget: int = 4096,
    pad_id: int = 0,
    massive_factor: float = 10.0,
    on_batch: Callable[[int], None] | None = None,
) -> Collected:
    device = next(model.parameters()).device
    index = {id(s): i for i, s in enumerate(seqs)}
    acts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    where: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for batch in make_batches(seqs, positions, token_budget, pad_id):
        resid = run_to_layers(model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
        seq_ids = torch.tensor([index[id(batch.sequences[r])] for r in batch.row.tolist()], dtype=torch.long)
        for layer in layers:
            x = gather(resid[layer], batch)
            keep = massive_keep(x, massive_factor)
            acts[layer].append(x[keep])
            where[layer].append(seq_ids[keep])
        if on_batch is not None:
            on_batch(len(batch.sequences))
    return Collected(
        {layer: torch.cat(v) if v else torch.zeros(0) for layer, v in acts.items()},
        {layer: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for layer, v in where.items()},
    )
