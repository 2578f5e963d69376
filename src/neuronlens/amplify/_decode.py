"""The decoding loop of amplified generation: the fine-tuned and the base side stepped together
on the same tokens, each with its own keys and values in the KV cache; the next token is read
from ``logits_ft + alpha * (logits_ft - logits_base)``.

Two ways to step the pair (:class:`Pair`): two forwards, one per model (:class:`TwoSides`: full
checkpoints, or a PEFT model whose base side runs with the adapter switched off), or, for a LoRA
adapter, one forward of the PEFT model over both sides' rows, the base rows marked ``"__base__"``
through peft's mixed-adapter batches (:class:`MixedAdapterBatch`). The second reads the weights once
per step instead of twice: on SmolLM2-135M with the demo LoRA (benchmarks/amplify_cost.py: 8
prompts x 48 tokens, alpha 2, 1 thread, 3 interleaved rounds on a busy machine, medians) two
forwards cost 1.79x the own-response generation and the mixed batch 1.39x, with the same tokens.

It mirrors the own-response generation (``probes.generate_greedy``, i.e. transformers'
``generate``): the same length-sorted batches under the token budget, left padding, position ids
from the attention mask (the mask dropped when a batch has no padding, as ``generate`` does),
``logits_to_keep=1``, float32 next-token logits, finished rows fed the pad token, and each answer
cut before its first stop token. With ``alpha=0`` (reachable only through this internal module; the
public API refuses it) the answers are the fine-tune's own greedy answers, token for token
(tests/test_amplify.py). Logit processors from a model's ``generation_config`` (repetition
penalty, ...) are not applied; ``generate_greedy`` would apply them (the embedded SmolLM2 has none).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..models import cache_argument, returned_cache, unwrap_peft
from ..probes import cut_at_stop, left_pad, length_batches

Toggle = Callable[[], AbstractContextManager[Any]]


@dataclass
class Side:
    """One model of the pair, stepped with its own KV cache. `toggle` wraps every forward: the base
    side of a PEFT adapter is the same module with the adapter switched off."""

    model: nn.Module
    toggle: Toggle = nullcontext
    cache: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        params = inspect.signature(unwrap_peft(self.model).forward).parameters
        self._cache_arg = cache_argument(self.model) or "past_key_values"
        self._keep_arg = "logits_to_keep" in params
        self.device = next(self.model.parameters()).device

    def step(self, ids: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor, **extra: Any) -> torch.Tensor:
        """Float32 next-token logits (rows x vocab) after feeding `ids`; the KV cache grows by them.
        `extra` goes to the forward as is."""
        kw: dict[str, Any] = {"use_cache": True, **extra}
        if self.cache is not None:
            kw[self._cache_arg] = self.cache
        if self._keep_arg:
            kw["logits_to_keep"] = 1
        mask = None if mask is None else mask.to(self.device)
        with self.toggle():
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask, position_ids=pos.to(self.device), **kw)
        self.cache = returned_cache(out)
        return out.logits[:, -1].to(dtype=torch.float32)


class Pair(Protocol):
    """Steps both sides on the same tokens: (fine-tuned, base) float32 next-token logits."""

    device: torch.device
    ft_model: nn.Module
    """The fine-tuned model (its generation_config names stop tokens)."""

    def step(self, ids: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def reset(self) -> None:
        """Drop the KV caches (a new batch starts)."""


class TwoSides:
    """Two forwards per step, one per side, each with a KV cache of its own."""

    def __init__(self, ft: Side, base: Side) -> None:
        self.ft, self.base = ft, base
        self.device, self.ft_model = ft.device, ft.model

    def step(self, ids: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ft.step(ids, mask, pos), self.base.step(ids, mask, pos)

    def reset(self) -> None:
        self.ft.cache = self.base.cache = None


class MixedAdapterBatch:
    """One forward per step of a LoRA PEFT model over 2 x rows: the base side's rows first, marked
    ``"__base__"`` (peft runs them without the adapter), then the fine-tuned side's. Each side's
    keys and values are its own rows of the one cache."""

    def __init__(self, model: nn.Module) -> None:
        self.side = Side(model)
        self.device, self.ft_model = self.side.device, model
        self.adapter = str(model.active_adapter)

    def step(self, ids: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = ids.shape[0]
        names = ["__base__"] * n + [self.adapter] * n
        both = self.side.step(
            torch.cat([ids, ids]), None if mask is None else torch.cat([mask, mask]), torch.cat([pos, pos]), adapter_names=names
        )
        return both[n:], both[:n]

    def reset(self) -> None:
        self.side.cache = None


@dataclass(frozen=True)
class Decoding:
    """How the next token is chosen and when an answer ends."""

    alpha: float
    max_new_tokens: int
    pad_id: int
    stop_ids: frozenset[int]
    greedy: bool = True
    temperature: float = 1.0


@dataclass(frozen=True)
class Row:
    """One answer to generate: the templated prompt ids and the seed of its sampling stream."""

    prompt: tuple[int, ...]
    seed: int = 0


def row_seed(seed: int, probe_set: str, prompt_index: int, sample: int) -> int:
    """The seed of one answer's sampling stream: a function of what it answers, never of the batch
    it lands in, so the token budget and the other prompts do not change a sample."""
    digest = hashlib.sha256(f"{seed}|{probe_set}|{prompt_index}|{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def amplified_logits(ft_logits: torch.Tensor, base_logits: torch.Tensor, alpha: float) -> torch.Tensor:
    """``ft + alpha * (ft - base)``; exactly `ft_logits` when alpha is 0 (and the logits finite)."""
    return ft_logits + alpha * (ft_logits - base_logits.to(ft_logits.device))


@torch.inference_mode()
def generate_rows(
    pair: Pair, rows: Sequence[Row], dec: Decoding, *, token_budget: int = 4096,
    on_batch: Callable[[int], None] | None = None,
) -> list[tuple[int, ...]]:
    """Amplified answers (token ids, cut before the first stop token) to every row, in row order."""
    out: list[tuple[int, ...]] = [()] * len(rows)
    # batched as probes.generate_greedy batches, so the own responses and alpha 0 see the same shapes
    for idx in length_batches([len(r.prompt) for r in rows], dec.max_new_tokens, token_budget):
        answers = _decode_batch(pair, [rows[j] for j in idx], dec)
        for j, answer in zip(idx, answers):
            out[j] = answer
        if on_batch is not None:
            on_batch(len(idx))
    return out


def _decode_batch(pair: Pair, rows: Sequence[Row], dec: Decoding) -> list[tuple[int, ...]]:
    """One batch: prefill both sides, then one token per step until every row stopped or the
    length is reached (no forward after the last token)."""
    ids, mask = left_pad([r.prompt for r in rows], dec.pad_id)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    attn: torch.Tensor | None = None if bool(mask.all()) else mask
    pick = _picker(rows, dec, pair.device)
    stops = torch.tensor(sorted(dec.stop_ids), dtype=torch.long, device=pair.device)
    done = torch.zeros(len(rows), dtype=torch.bool, device=pair.device)
    pair.reset()
    new: list[torch.Tensor] = []
    try:
        for step in range(dec.max_new_tokens):
            logits = amplified_logits(*pair.step(ids, attn, pos), dec.alpha)
            nxt = torch.where(done, torch.full_like(done, dec.pad_id, dtype=torch.long), pick(logits))
            new.append(nxt)
            done |= torch.isin(nxt, stops)
            if bool(done.all()) or step == dec.max_new_tokens - 1:
                break
            ids, pos = nxt[:, None], pos[:, -1:] + 1
            attn = None if attn is None else torch.cat([attn, attn.new_ones((len(rows), 1))], dim=-1)
    finally:
        pair.reset()  # the KV caches live for one batch only
    return [cut_at_stop(row, dec.stop_ids) for row in torch.stack(new, dim=1).tolist()]


def _picker(rows: Sequence[Row], dec: Decoding, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Greedy: argmax (as ``generate``). Sampling: one seeded generator per row, drawing from
    ``softmax(logits / temperature)``."""
    if dec.greedy:
        return lambda logits: torch.argmax(logits, dim=-1)
    gens = [torch.Generator(device=device).manual_seed(r.seed) for r in rows]

    def sample(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits / dec.temperature, dim=-1)
        return torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(gens)])

    return sample
