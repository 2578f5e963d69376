"""Picking the measured tokens out of a batch's residuals."""

from __future__ import annotations

import torch

from ._sequences import Batch


def gather(resid: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[n_measured_tokens, d_model] float32 rows of `resid` [B, T, D] at the batch's positions."""
    return resid[batch.row.to(resid.device), batch.col.to(resid.device)].float().cpu()


def massive_keep(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Bool mask of rows whose norm is at most `factor` x the median row norm. Attention-sink
    tokens carry residual norms hundreds of times the typical one (SmolLM2: ~300 on the first
    token vs ~1 for fine-tuning shifts, ../shared/FACTS.md); one such row would dominate every
    mean and every SAE reconstruction."""
    if x.shape[0] == 0:
        return torch.ones(0, dtype=torch.bool)
    norms = x.norm(dim=-1)
    return norms <= factor * norms.median().clamp_min(1e-12)
