"""Mergeable float64 sums of the fine-tuned minus base residual at one layer, per position.

Like :mod:`neuronlens.stats`, everything the lens reports comes from sums (a sum vector and a
count per position, plus the sums behind the typical residual norm), so batches, processes and
machines combine by addition.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

F64 = torch.float64

NORM_FROM = 5
"""The typical residual norm (the steering scale) is averaged over positions >= 5, as the
diffing-toolkit's `_compute_and_save_norms` does (`skip_tokens = 5`, "to avoid BOS effects")."""


@dataclass
class DifferenceSums:
    """Sums at one layer over texts read by both models. Row i of `diff_sum` is position i + 1:
    position 0 (the attention-sink token, whose residual is massive) is never summed."""

    diff_sum: torch.Tensor
    """[n_positions, d_model] sum of h_ft - h_base at positions 1..n_positions."""
    count: torch.Tensor
    """[n_positions] texts summed at each position."""
    base_norm_sum: torch.Tensor
    ft_norm_sum: torch.Tensor
    """0-d sums of ||h|| over the tokens at positions >= NORM_FROM."""
    norm_count: torch.Tensor
    """0-d number of those tokens."""

    @classmethod
    def zeros(cls, n_positions: int, d_model: int) -> DifferenceSums:
        z = torch.zeros((), dtype=F64)
        return cls(torch.zeros((n_positions, d_model), dtype=F64), torch.zeros(n_positions, dtype=F64), z, z.clone(), z.clone())

    @property
    def n_positions(self) -> int:
        return int(self.diff_sum.shape[0])

    def merge(self, other: DifferenceSums) -> DifferenceSums:
        """The sums of both (exact: float64 addition of the same float32-derived terms)."""
        return DifferenceSums(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def add(self, base: torch.Tensor, ft: torch.Tensor, position: torch.Tensor) -> None:
        """Add residuals [n, d] of both models on the same n tokens at `position` [n]: the
        difference at positions 1..n_positions, the norms at positions >= NORM_FROM."""
        diff = ft.to(F64) - base.to(F64)
        keep = (position >= 1) & (position <= self.n_positions)
        row = position[keep] - 1
        self.diff_sum.index_add_(0, row, diff[keep])
        self.count.index_add_(0, row, torch.ones(row.shape[0], dtype=F64))
        deep = position >= NORM_FROM
        self.base_norm_sum += base[deep].to(F64).norm(dim=-1).sum()
        self.ft_norm_sum += ft[deep].to(F64).norm(dim=-1).sum()
        self.norm_count += int(deep.sum())

    def mean_diff(self) -> torch.Tensor:
        """[n_positions, d_model] mean difference per position (float64)."""
        return self.diff_sum / self.count.clamp_min(1).unsqueeze(1)

    def pooled_diff(self) -> torch.Tensor:
        """[d_model] mean difference over all summed tokens of positions 1..n_positions."""
        return self.diff_sum.sum(0) / self.count.sum().clamp_min(1)

    def typical_norm(self, side: str) -> float:
        """Mean residual norm of `side` ('base' or 'ft') at positions >= NORM_FROM."""
        total = self.base_norm_sum if side == "base" else self.ft_norm_sum
        return float(total / self.norm_count.clamp_min(1))
