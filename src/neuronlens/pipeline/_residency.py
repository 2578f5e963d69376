"""Which model is resident when: with lazily-loaded handles only one model is in memory at a time,
and a PEFT adapter on the audited base shares the base weights (injected after the base pass,
removed afterwards, which restores the base exactly)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..models import ModelHandle, fused_lora, peft_wrap_quietly


@dataclass(frozen=True)
class ModelView:
    """The three things response generation needs, for a model that may not have a handle of its
    own (an adapter injected into shared base weights)."""

    digest: str
    tokenizer: Any
    model: nn.Module
    name: str = "the fine-tuned model"
    """How errors name it."""


def shares_base_weights(base: ModelHandle, ft: ModelHandle) -> bool:
    """Whether `ft` is a PEFT adapter on exactly `base` that can be injected into its weights."""
    return ft.kind == "peft" and ft.base is not None and ft.base.digest == base.digest and not ft.is_loaded


@contextmanager
def resident(handle: ModelHandle, *, keep: bool) -> Iterator[nn.Module]:
    """`handle`'s model, loaded if it is not; released on exit unless `keep`."""
    model = handle.model
    try:
        with fused_lora(model):  # a PEFT model's LoRA layers as one GEMM each (models/_lora.py)
            yield model
    finally:
        if not keep:
            handle.release()


@contextmanager
def adapter_on(base_nn: nn.Module, ft: ModelHandle) -> Iterator[nn.Module]:
    """`ft`'s PEFT adapter injected into the resident base weights; removed again on exit, which
    restores the base model exactly."""
    from peft import PeftModel

    with peft_wrap_quietly():  # peft reads transformers' deprecated is_gradient_checkpointing
        peft_model = PeftModel.from_pretrained(base_nn, str(ft.path), is_trainable=False)
    peft_model.eval()
    try:
        with fused_lora(peft_model):
            yield peft_model
    finally:
        peft_model.unload()


@contextmanager
def adapter_off(peft_model: nn.Module) -> Iterator[nn.Module]:
    """The base model inside `peft_model` (its adapter disabled until exit): what a read whose
    text the base model reads runs on while the adapter shares the base weights."""
    with peft_model.disable_adapter():  # type: ignore[operator]
        yield peft_model


def runtime_of(model: nn.Module) -> dict[str, str]:
    """dtype and device(s) of `model`'s weights: bfloat16 moves the numbers (layer drift within
    about 10% of float32's, tests/test_cuda.py), so a report and its certificate say which it was."""
    params = list(model.parameters())
    return {
        "dtype": ",".join(sorted({str(p.dtype).removeprefix("torch.") for p in params})),
        "device": ",".join(sorted({str(p.device) for p in params})),
    }
