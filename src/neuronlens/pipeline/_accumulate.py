"""Adding SAE codes to the audit's sums, read by read.

The 'same' read is paired token by token (both models on the base responses); every other read
is one-sided (:mod:`._reads`): each side reads its own text, and the sides are paired by prompt
(the base side's per-prompt means are kept until the other side arrives).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..capture import Batch, code_chunk_tokens, row_chunks
from ..risk import EvidenceStore, RiskSetup
from ..saes import SAESet
from ..stats import AuditSums, LatentSums

RECONSTRUCTION_STRIDE = 4
"""The SAE's reconstruction of the base residuals is checked on every 4th measured token: a
decode costs about as much as an encode, and 3,500 of the default audit's 14,000 tokens pin the
FVU down far more finely than the 0.5 it is held against."""

PromptId = tuple[str, int]
"""(probe set, prompt index)."""


@dataclass(frozen=True)
class BaseBatch:
    """What the base pass keeps per batch for the paired fine-tuned pass."""

    batch: Batch
    resid: dict[int, torch.Tensor]
    keep: dict[int, torch.Tensor]


@dataclass
class Accumulator:
    """Adds one batch's SAE codes to every statistic the audit keeps: latent sums, residual
    sums, concept-projection sums (with risk scoring) and token-level evidence."""

    sae: SAESet
    sums: AuditSums
    risk: RiskSetup | None
    evidence: EvidenceStore | None
    base_means: dict[tuple[str, int, PromptId], torch.Tensor] = field(default_factory=dict)
    """Per (latent|concept, layer, prompt): the base side's mean of the one-side reads (the base
    model on its own responses, the same for every one-side read)."""
    prompt_shifts: dict[tuple[str, int, PromptId], torch.Tensor] = field(default_factory=dict)
    """Per (one-side read, layer, prompt): its concept coordinates' mean minus the base side's
    (n_concepts floats): which answers moved towards a concept, for the behavioural evidence."""
    reconstruction_stride: ClassVar[int] = RECONSTRUCTION_STRIDE
    """Every how many measured tokens the base residuals' reconstruction is checked (a class
    setting, for benchmarks/sae_check_cost.py)."""

    def chunk_tokens(self, layer: int) -> int:
        """Most tokens encoded at once at `layer`: dense codes and their float64 statistics
        temporaries are tokens x d_sae, several GB for a 4,096-token batch and a 16k-latent SAE."""
        return code_chunk_tokens(self.sae[layer].d_sae)

    def paired(self, layer: int, bb: BaseBatch, xf: torch.Tensor) -> None:
        """Base and fine-tuned residuals of the same tokens ('same' read)."""
        for sub, ix in row_chunks(bb.batch, self.chunk_tokens(layer)):
            self._paired(layer, sub, bb.resid[layer][ix], xf[ix], bb.keep[layer][ix])

    def _paired(self, layer: int, batch: Batch, xb: torch.Tensor, xf: torch.Tensor, keep: torch.Tensor) -> None:
        key, probes = _prompt_keys(batch)
        sae = self.sae[layer]
        cb, cf = sae.encode(xb), sae.encode(xf)
        for probe, ix in _split_by_probe(probes, keep).items():
            self.sums.latent("same", layer, probe, sae.d_sae).add_paired(cb[ix], cf[ix], key[ix])
            self.sums.resid(layer, probe).add(xb[ix], xf[ix])
            sub = ix[:: self.reconstruction_stride]
            self.sums.reconstruction(layer, probe, sae.info.d_in).add(xb[sub], sae.decode(cb[sub]))
            if self.risk is not None:
                pb, pf = self.risk.project(layer, cb[ix]), self.risk.project(layer, cf[ix])
                self.sums.concept("same", layer, probe, len(self.risk.names)).add_paired(pb, pf, key[ix])
        self._keep_evidence("same", layer, batch, keep, cb, cf)

    def one_side(self, reads: Sequence[str], side: str, layer: int, batch: Batch, x: torch.Tensor, keep: torch.Tensor) -> None:
        """One model's residuals on text of its own, added to each of `reads` (one-side reads).
        Side 'base' keeps its per-prompt means; side 'ft' is paired with them prompt by prompt
        (same prompt, different text)."""
        for sub, ix in row_chunks(batch, self.chunk_tokens(layer)):
            self._one_side(reads, side, layer, sub, x[ix], keep[ix])

    def _one_side(self, reads: Sequence[str], side: str, layer: int, batch: Batch, x: torch.Tensor, keep: torch.Tensor) -> None:
        key, probes = _prompt_keys(batch)
        codes = self.sae[layer].encode(x)
        for probe, ix in _split_by_probe(probes, keep).items():
            proj = self.risk.project(layer, codes[ix]) if self.risk is not None else None
            for read in reads:
                stats = [(self.sums.latent(read, layer, probe, self.sae[layer].d_sae), codes[ix], "latent")]
                if self.risk is not None:
                    stats.append((self.sums.concept(read, layer, probe, len(self.risk.names)), proj, "concept"))
                for sums, values, kind in stats:
                    self._add_side(sums, side, values, key[ix], (kind, layer, probe), batch, read)
        if side == "ft":
            for read in reads:
                self._keep_evidence(read, layer, batch, keep, None, codes)

    def _add_side(self, sums: LatentSums, side: str, values: torch.Tensor, key: torch.Tensor,
                  where: tuple[str, int, str], batch: Batch, read: str) -> None:
        kind, layer, probe = where
        rows, means = sums.add_side(side, values, key)
        prompt_ids = [(probe, batch.sequences[int(r)].prompt_index) for r in rows]
        if side == "base":
            for pid, m in zip(prompt_ids, means):
                self.base_means[(kind, layer, pid)] = m
            return
        pairs = [(pid, m, self.base_means.get((kind, layer, pid))) for pid, m in zip(prompt_ids, means)]
        diffs = [(pid, m - b) for pid, m, b in pairs if b is not None]
        if diffs:
            sums.add_prompt_diffs(torch.stack([d for _, d in diffs]))
        if kind == "concept":
            self.prompt_shifts.update(((read, layer, pid), d.clone()) for pid, d in diffs)

    def _keep_evidence(
        self, read: str, layer: int, batch: Batch, keep: torch.Tensor, cb: torch.Tensor | None, cf: torch.Tensor
    ) -> None:
        if self.evidence is None:
            return
        token_ids = batch.input_ids[batch.row, batch.col]
        for r, seq in enumerate(batch.sequences):
            sel = torch.nonzero((batch.row == r) & keep).squeeze(1)
            if sel.numel() == 0:
                continue
            self.evidence.add(
                read, layer, seq.probe_set, seq.prompt_index, token_ids[sel].tolist(),
                None if cb is None else cb[sel], cf[sel],
            )


def _prompt_keys(batch: Batch) -> tuple[torch.Tensor, list[str]]:
    """For each measured token: which prompt it belongs to (its batch row: one row is one
    prompt's sequence) and that prompt's probe set."""
    return batch.row.clone(), [batch.sequences[r].probe_set for r in batch.row.tolist()]


def _split_by_probe(probes: list[str], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, list[int]] = {}
    for i, (p, k) in enumerate(zip(probes, keep.tolist())):
        if k:
            out.setdefault(p, []).append(i)
    return {p: torch.tensor(ix, dtype=torch.long) for p, ix in out.items()}
