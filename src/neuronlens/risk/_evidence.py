"""Token-level evidence for risky features: where in the probes a latent moved, with both
models' activations token by token.

During the passes the pipeline keeps each measured token's SAE code as a sparse vector (a TopK
SAE has k non-zeros per token, so this is small) together with the token ids; once the risky
latents are known, their most-moved prompts are looked up here instead of re-running the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ._types import Evidence


@dataclass
class _Record:
    probe_set: str
    prompt_index: int
    token_ids: list[int]
    base: torch.Tensor | None
    """Sparse [n_tokens, d_sae] codes of the base model (None for the fine-tuned model's own responses)."""
    ft: torch.Tensor


@dataclass
class EvidenceStore:
    prompts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Probe set name -> its prompts (to show the prompt text)."""
    records: dict[tuple[str, int], list[_Record]] = field(default_factory=dict)
    """(read, layer) -> one record per probe sequence."""

    def add(
        self, read: str, layer: int, probe_set: str, prompt_index: int, token_ids: list[int],
        base_codes: torch.Tensor | None, ft_codes: torch.Tensor,
    ) -> None:
        self.records.setdefault((read, layer), []).append(
            _Record(probe_set, prompt_index, token_ids, None if base_codes is None else base_codes.to_sparse(), ft_codes.to_sparse())
        )

    def sort_records(self) -> None:
        """Put each (read, layer)'s records in probe-set order, then prompt order: the order then
        does not depend on how the prompts were batched or sharded over ranks, so ties and float
        sums over records come out the same in a single-process and a data-parallel audit."""
        order = {name: i for i, name in enumerate(self.prompts)}
        for recs in self.records.values():
            recs.sort(key=lambda r: (order.get(r.probe_set, len(order)), r.probe_set, r.prompt_index))

    def top_contexts(self, read: str, layer: int, latent: int, *, k: int = 3, sign: int = 1, tokenizer: Any = None) -> list[Evidence]:
        """The `k` probe sequences where the latent's mean activation moved most in direction `sign`."""
        recs = self.records.get((read, layer), [])
        scored = []
        for rec in recs:
            ft = _column(rec.ft, latent)
            base = _column(rec.base, latent) if rec.base is not None else None
            delta = float(ft.mean()) - (float(base.mean()) if base is not None else 0.0)
            scored.append((sign * delta, rec, ft, base))
        scored.sort(key=lambda t: t[0], reverse=True)
        out = []
        for _, rec, ft, base in scored[:k]:
            tokens = [tokenizer.decode([t]) for t in rec.token_ids] if tokenizer is not None else [str(t) for t in rec.token_ids]
            out.append(
                Evidence(
                    probe_set=rec.probe_set,
                    prompt=self.prompts.get(rec.probe_set, ())[rec.prompt_index] if rec.probe_set in self.prompts else "",
                    tokens=tokens,
                    base_acts=[round(float(v), 4) for v in base] if base is not None else [],
                    ft_acts=[round(float(v), 4) for v in ft],
                    read=read,
                )
            )
        return out


def _column(sparse: torch.Tensor, j: int) -> torch.Tensor:
    return sparse.index_select(1, torch.tensor([j])).to_dense().squeeze(1)
