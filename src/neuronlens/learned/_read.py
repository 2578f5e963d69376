"""The text both models read, and reading it at the lens layers.

Like the diffing-toolkit's non-chat path (`load_and_tokenize_dataset`), each text is tokenized
on its own with the tokenizer's special tokens and cut to its first `max_tokens` tokens; texts
too short to reach the last lens position are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import nn

from ..capture import TokenSequence, gather, make_batches, run_to_layers
from ..errors import DataError, ModelLoadError
from ..models import ModelHandle
from ..probes import ProbeSet, decode_response, response_sequences
from ._sums import DifferenceSums

TEXT_SET = "learned_text"

Toggle = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class Side:
    """One model of the pair: the base side of a PEFT adapter is the same module under
    ``disable_adapter()``."""

    model: nn.Module
    toggle: Toggle = nullcontext
    name: str = "model"


def neutral_prompts() -> ProbeSet:
    """The ~300 varied chat prompts of the built-in SAE corpus (package data of
    ``neuronlens.saes.corpus``): none of them is a probe prompt."""
    text = resources.files("neuronlens.saes.corpus").joinpath("prompts.jsonl").read_text(encoding="utf-8")
    return ProbeSet(TEXT_SET, tuple(json.loads(line)["prompt"] for line in text.splitlines() if line.strip()), "builtin")


def base_texts(base: ModelHandle, n_texts: int, max_new_tokens: int) -> list[str]:
    """The base model's greedy answers to `n_texts` neutral prompts (spread over the corpus),
    generated once per (model, prompts, length) and cached like the audit's own responses (not
    for a handle with another model attached: its weights need not be the digest's)."""
    loaded_before = base.is_loaded
    seqs = response_sequences(base, [neutral_prompts().subset(n_texts)], max_new_tokens, use_cache=base.cacheable)
    if not loaded_before and base.is_loaded:
        base.release()  # a PEFT pair keeps one resident model: the adapter's own
    return [decode_response(base.tokenizer, s) for s in seqs]


def text_sequences(tokenizer: Any, texts: Sequence[str], max_tokens: int, min_tokens: int) -> list[TokenSequence]:
    """Each text's first `max_tokens` tokens; texts with fewer than `min_tokens` are dropped."""
    seqs = []
    for i, text in enumerate(texts):
        ids = tuple(tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens])
        if len(ids) >= min_tokens:
            seqs.append(TokenSequence(TEXT_SET, i, (), ids))
    if not seqs:
        raise DataError(
            f"None of the {len(texts)} texts has the {min_tokens} tokens the lens reads (position 0 plus {min_tokens - 1}).",
            "Pass longer texts, or lower n_positions.",
        )
    return seqs


def check_same_vocab(base: ModelHandle, ft: ModelHandle) -> None:
    """Both models must read the same token ids (checked before any weights load)."""
    bt, ftok = base.tokenizer, ft.tokenizer
    if bt is not ftok and (len(bt) != len(ftok) or bt.get_vocab() != ftok.get_vocab()):
        raise ModelLoadError(
            f"Base {base.name!r} ({len(bt)} tokens) and fine-tune {ft.name!r} ({len(ftok)} tokens) use different tokenizers, "
            "so they cannot read the same text.",
            "Compare a fine-tune with the base model it was fine-tuned from (same tokenizer).",
        )


@dataclass
class SideRead:
    """One side's residuals at each layer: the rows of every measured token (positions >= 1)."""

    rows: dict[int, list[torch.Tensor]]
    position: list[torch.Tensor]


def read_side(side: Side, seqs: Sequence[TokenSequence], layers: Sequence[int], token_budget: int, pad_id: int) -> SideRead:
    """Residual outputs of `layers` on every token at positions >= 1 (float32, on the CPU)."""
    device = next(side.model.parameters()).device
    out = SideRead({layer: [] for layer in layers}, [])
    for batch in make_batches(seqs, "all", token_budget, pad_id):
        with side.toggle():
            resid = run_to_layers(side.model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
        for layer in layers:
            out.rows[layer].append(gather(resid[layer], batch, layer=layer, model=side.name))
        out.position.append(batch.col)
    return out


def difference_sums(base: SideRead, ft: SideRead, n_positions: int, d_model: int) -> dict[int, DifferenceSums]:
    """Per layer, the sums of ft - base over the tokens both sides read (same batches)."""
    sums = {}
    for layer, rows in base.rows.items():
        s = DifferenceSums.zeros(n_positions, d_model)
        for b, f, pos in zip(rows, ft.rows[layer], base.position):
            s.add(b, f, pos)
        sums[layer] = s
    return sums


@contextmanager
def resident(handle: ModelHandle) -> Iterator[nn.Module]:
    """`handle`'s model, released on exit unless it was loaded before."""
    loaded_before = handle.is_loaded
    try:
        yield handle.model
    finally:
        if not loaded_before:
            handle.release()


def shares_base(base: ModelHandle, ft: ModelHandle) -> bool:
    """Whether `ft` is a PEFT adapter on exactly `base`'s weights (one resident model)."""
    return ft.kind == "peft" and ft.base is not None and ft.base.digest == base.digest


OpenSide = Callable[[], AbstractContextManager[Side]]


@contextmanager
def pair_sides(base: ModelHandle, ft: ModelHandle) -> Iterator[tuple[OpenSide, OpenSide]]:
    """(fine-tuned side, base side) factories. A PEFT adapter on `base` keeps its model resident
    throughout and the base side toggles the adapter off; two full models are each resident only
    while their side is open, so at most one is loaded at a time."""
    if shares_base(base, ft):
        with resident(ft) as model:
            yield (lambda: _side(ft, "fine-tuned model")), (lambda: _side(ft, "base model (adapter disabled)", model.disable_adapter))
        return
    yield (lambda: _side(ft, "fine-tuned model")), (lambda: _side(base, "base model"))


@contextmanager
def _side(handle: ModelHandle, name: str, toggle: Toggle = nullcontext) -> Iterator[Side]:
    with resident(handle) as model:
        yield Side(model, toggle, name)
