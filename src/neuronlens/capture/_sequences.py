"""Token sequences that both models read, the positions that are measured, and batching by a
token budget.

A sequence is the chat-templated prompt followed by a response (by default the base model's
greedy response), so base and fine-tuned models are compared on identical tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenSequence:
    probe_set: str
    prompt_index: int
    """Index of the prompt within its probe set."""
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]

    @property
    def ids(self) -> tuple[int, ...]:
        return self.prompt_ids + self.response_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    def positions(self, mode: str) -> range:
        """Measured positions. Position 0 (the attention-sink token, whose residual is massive in
        most LMs) is never measured."""
        n, p = len(self), len(self.prompt_ids)
        if mode == "response":
            return range(max(p, 1), n)
        if mode == "prompt":
            return range(1, p)
        if mode == "last":
            return range(n - 1, n) if n > 1 else range(0)
        if mode == "all":
            return range(1, n)
        raise ValueError(f"unknown positions mode {mode!r}")


@dataclass
class Batch:
    sequences: list[TokenSequence]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    """Right-padded; padding is masked out and never measured."""
    row: torch.Tensor
    """For each measured token: its row in the batch."""
    col: torch.Tensor
    """For each measured token: its position in the sequence."""

    @property
    def n_tokens(self) -> int:
        return int(self.row.numel())


def make_batches(seqs: Sequence[TokenSequence], mode: str, token_budget: int, pad_id: int) -> Iterator[Batch]:
    """Group sequences (longest first, so padding stays small) into batches whose padded size
    stays within `token_budget` tokens; a single longer sequence gets a batch of its own."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    group: list[TokenSequence] = []
    for i in order:
        s = seqs[i]
        width = max([len(s)] + [len(g) for g in group])
        if group and width * (len(group) + 1) > token_budget:
            yield _collate(group, mode, pad_id)
            group = []
        group.append(s)
    if group:
        yield _collate(group, mode, pad_id)


def _collate(group: list[TokenSequence], mode: str, pad_id: int) -> Batch:
    width = max(len(s) for s in group)
    ids = torch.full((len(group), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(group), width), dtype=torch.long)
    rows: list[int] = []
    cols: list[int] = []
    for r, s in enumerate(group):
        ids[r, : len(s)] = torch.tensor(s.ids, dtype=torch.long)
        mask[r, : len(s)] = 1
        pos = s.positions(mode)
        rows.extend([r] * len(pos))
        cols.extend(pos)
    return Batch(group, ids, mask, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long))


CODE_CHUNK_ELEMENTS = 2**24
"""Tokens x latents encoded at once (64 MB of float32 codes). The shipped SAEs (2,304 latents)
take 7,281 tokens per chunk, more than a default batch measures, so only wider SAEs are chunked;
a cold audit of a 1B model with 16k-latent SAEs peaked at 4,781 MiB without chunking, 4,509 MiB
with it (benchmarks/scale_memory.py, docs/PERFORMANCE.md)."""


def code_chunk_tokens(d_sae: int) -> int:
    """Most tokens to encode at once with a `d_sae`-latent SAE: dense codes and their float64
    statistics temporaries are tokens x d_sae (several GB for a 4,096-token batch at 16k latents)."""
    return max(1, CODE_CHUNK_ELEMENTS // d_sae)


def row_chunks(batch: Batch, max_tokens: int) -> Iterator[tuple[Batch, slice | torch.Tensor]]:
    """Split `batch` into groups of whole rows (prompts) holding at most `max_tokens` measured
    tokens each (a row with more forms a group of its own). Yields (sub-batch, index of its tokens
    among the batch's measured tokens). Every per-prompt statistic sees all of a prompt's tokens
    in one group, and the groups' sums add up to the batch's, so chunking bounds memory (dense SAE
    codes are tokens x d_sae) without changing any statistic. One group: the batch itself."""
    if batch.n_tokens <= max_tokens:
        yield batch, slice(None)
        return
    counts = torch.bincount(batch.row, minlength=len(batch.sequences)).tolist()
    group: list[int] = []
    n = 0
    for r, c in enumerate(counts):
        if group and n + c > max_tokens:
            yield _sub_batch(batch, group)
            group, n = [], 0
        group.append(r)
        n += c
    if group:
        yield _sub_batch(batch, group)


def _sub_batch(batch: Batch, rows: list[int]) -> tuple[Batch, torch.Tensor]:
    picked = torch.tensor(rows, dtype=torch.long)
    ix = torch.nonzero(torch.isin(batch.row, picked)).squeeze(1)
    new_row = torch.full((len(batch.sequences),), -1, dtype=torch.long)
    new_row[picked] = torch.arange(len(rows))
    sub = Batch([batch.sequences[r] for r in rows], batch.input_ids[picked], batch.attention_mask[picked], new_row[batch.row[ix]], batch.col[ix])
    return sub, ix
