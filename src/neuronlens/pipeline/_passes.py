"""The forward passes: the base pass, the paired fine-tuned pass and a one-side read's pass."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .._progress import progress
from ..capture import Batch, TokenSequence, gather, make_batches, massive_keep, run_to_layers
from ..config import AuditConfig
from ._accumulate import Accumulator, BaseBatch

if TYPE_CHECKING:
    from .._distributed import DataParallel


def base_forward(model: nn.Module, batches: list[Batch], layers: list[int], name: str) -> list[dict[int, torch.Tensor]]:
    """The base model's residuals at `layers` on the measured tokens of every batch (`name`: the
    model, as an error about non-finite activations names it)."""
    device = next(model.parameters()).device
    out: list[dict[int, torch.Tensor]] = []
    with progress("Base model pass", sum(len(b.sequences) for b in batches)) as advance:
        for batch in batches:
            resid = run_to_layers(model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
            out.append({layer: gather(resid[layer], batch, layer=layer, model=name) for layer in layers})
            advance(len(batch.sequences))
    return out


def accumulate_base(
    batches: list[Batch], resid: list[dict[int, torch.Tensor]], layers: list[int], cfg: AuditConfig, acc: Accumulator,
    one_side: tuple[str, ...],
) -> tuple[BaseBatch, ...]:
    """Encode the base residuals, add the base side of the one-side reads (the base model's own
    responses are exactly these sequences), and keep what the paired fine-tuned pass needs."""
    kept: list[BaseBatch] = []
    for batch, x in zip(batches, resid):
        keep = {layer: massive_keep(x[layer], cfg.massive_activation_factor) for layer in layers}
        if one_side:
            for layer in layers:
                acc.one_side(one_side, "base", layer, batch, x[layer], keep[layer])
        kept.append(BaseBatch(batch, x, keep))
    return tuple(kept)


def ft_pass(model: nn.Module, base_batches: tuple[BaseBatch, ...], layers: list[int], acc: Accumulator, name: str) -> None:
    """The fine-tuned model on the base pass's tokens, paired with it token by token ('same')."""
    device = next(model.parameters()).device
    with progress("Fine-tuned model pass", sum(len(b.batch.sequences) for b in base_batches)) as advance:
        for bb in base_batches:
            b = bb.batch
            resid = run_to_layers(model, b.input_ids.to(device), b.attention_mask.to(device), layers)
            for layer in layers:
                acc.paired(layer, bb, gather(resid[layer], b, layer=layer, model=name))
            advance(len(b.sequences))


def one_side_pass(
    model: nn.Module, seqs: list[TokenSequence], read: str, label: str, layers: list[int], cfg: AuditConfig,
    acc: Accumulator, pad_id: int, name: str,
) -> None:
    """`model` reading `seqs`: the 'ft' side of the one-side read `read`."""
    device = next(model.parameters()).device
    with progress(label, len(seqs)) as advance:
        for batch in make_batches(seqs, cfg.positions, cfg.token_budget, pad_id):
            resid = run_to_layers(model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
            for layer in layers:
                x = gather(resid[layer], batch, layer=layer, model=name)
                acc.one_side((read,), "ft", layer, batch, x, massive_keep(x, cfg.massive_activation_factor))
            advance(len(batch.sequences))


def every_rank(seqs: list[TokenSequence], parallel: DataParallel | None) -> list[TokenSequence]:
    """The sequences of every rank of a data-parallel audit (a collective: every rank calls it
    at the same point), else `seqs`."""
    return seqs if parallel is None else [s for part in parallel.all_gather(seqs) for s in part]
