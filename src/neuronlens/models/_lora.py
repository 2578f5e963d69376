"""LoRA layers of a PEFT model run fused: on a call of many rows, ``x (W + s B A)^T`` with the
adapter merged into a temporary float32 weight (one weight-sized product per call, nothing kept);
on a smaller call, ``torch.addmm(base(x), x A^T, B^T, alpha=s)``, the adapter's product
accumulated into the base layer's output in the GEMM. Either replaces peft's ``result +
lora_B(lora_A(dropout(x))) * scaling`` (more passes over the activations, a dropout call and
per-call checks).

Measured by ``python benchmarks/lora_fused.py`` (the demo pair: SmolLM2-135M with its rank-8 LoRA
on the seven projections of all 30 blocks, 210 layers; the fine-tuned model's forward to layer 21
over the audit's batches, 5 interleaved rounds, 2 threads, nothing else heavy running): the
adapter's layers cost +14.1% over the base model's forward by peft's, +11.1% with the addmm
(residuals bit-identical to peft's), +1.2% merged per call (1.13x faster than peft's forward;
residuals within 2.2e-06 of peft's relative to their largest value, no SAE top-k set changed:
docs/PERFORMANCE.md). The audit's batches (thousands of rows) merge; generation steps do not.

Only the plain case is fused: a ``peft.tuners.lora.Linear`` (the class itself: quantized and
other subclasses keep their own forward), not merged, adapters enabled, no mixed-batch
``adapter_names``, every active adapter vanilla LoRA (no DoRA or other variant), no LoRA bias, and
its dropout inactive (evaluation mode). Anything else runs peft's forward unchanged."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


MERGE_MIN_ROWS = 1024
"""Fewest rows (tokens) of a call for which the layer runs with its adapter merged into a temporary
weight, ``x (W + s B A)^T``: one weight-sized product and add per call, in place of the adapter's
passes over the activations (``x A^T``, then reading and rewriting the output in the addmm). Below
it, and below the layer's larger dimension, the addmm is kept: a generation step (a few rows) would
pay a weight-sized product per step. ``python benchmarks/lora_fused.py --crossover`` (one rank-8
layer, 2 threads, 2026-12-07; addmm time / merged time at 128, 512, 1024, 2048 rows): 576->576
0.92, 0.99, 1.04, 1.09; 576->1536 0.91, 1.02, 1.06, 1.04; 1536->576 0.89, 0.99, 1.05, 1.08."""


@contextmanager
def fused_lora(model: nn.Module, merge_min_rows: int | None = None) -> Iterator[nn.Module]:
    """`model` with its plain LoRA linear layers running the fused forward until exit (no-op for a
    model without LoRA layers); the layers' own forward is restored on exit. A call of at least
    `merge_min_rows` rows (default: ``MERGE_MIN_ROWS`` or the layer's larger dimension, whichever
    is more; 0: every call) runs the layer with its adapter merged into a temporary weight, where
    the layer allows it (float32, see ``_merge_pays``)."""
    layer_module = sys.modules.get("peft.tuners.lora.layer")  # not imported: no peft LoRA layer exists
    lora_linear = None if layer_module is None else layer_module.Linear
    patched = [m for m in model.modules() if type(m) is lora_linear and "forward" not in m.__dict__]
    for m in patched:
        m.forward = partial(_fused_forward, m, merge_min_rows)  # an instance attribute: nn.Module.__call__ finds it first
    try:
        yield model
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


def _plain(layer: Any, kwargs: dict[str, Any]) -> bool:
    """Whether peft's forward would take the vanilla LoRA branch with nothing the fused one skips."""
    if kwargs or layer.disable_adapters or layer.merged:
        return False
    variants = getattr(layer, "lora_variant", None)  # peft releases without it cannot say which adapter is DoRA
    if variants is None:
        return False
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        dropout = layer.lora_dropout[name]
        if name in variants or layer.lora_B[name].bias is not None or (dropout.training and not isinstance(dropout, nn.Identity)):
            return False
    return True


def _fused_forward(self: Any, merge_min_rows: int | None, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if not _plain(self, kwargs):
        return type(self).forward(self, x, *args, **kwargs)
    if _merge_pays(self, x, merge_min_rows):
        return _merged_call(self, x)
    result = self.base_layer(x, *args)
    dtype, shape = result.dtype, result.shape
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        xa = F.linear(x.to(a.dtype), a)
        flat = result.to(b.dtype).reshape(-1, shape[-1])
        result = torch.addmm(flat, xa.reshape(-1, xa.shape[-1]), b.t(), alpha=self.scaling[name]).view(shape)
    return result.to(dtype)


def _merge_pays(layer: Any, x: torch.Tensor, min_rows: int | None) -> bool:
    """Whether this call merges: enough rows (see `fused_lora`), a plain float32 ``nn.Linear`` base
    layer (in bf16 or fp16 the adapter's small product would be rounded away in the merged
    weight), not stored transposed (GPT-2's Conv1D), and every active adapter's weights float32."""
    base = layer.base_layer
    if type(base) is not nn.Linear or layer.fan_in_fan_out or base.weight.dtype != torch.float32:
        return False
    need = max(MERGE_MIN_ROWS, *base.weight.shape) if min_rows is None else min_rows
    if x.numel() < need * x.shape[-1]:
        return False
    return all(layer.lora_A[n].weight.dtype == torch.float32 and layer.lora_B[n].weight.dtype == torch.float32
               for n in layer.active_adapters if n in layer.lora_A)


def _merged_call(layer: Any, x: torch.Tensor) -> torch.Tensor:
    base = layer.base_layer
    w = base.weight
    for name in layer.active_adapters:
        if name in layer.lora_A:
            w = torch.addmm(w, layer.lora_B[name].weight, layer.lora_A[name].weight, alpha=layer.scaling[name])
    return F.linear(x.to(w.dtype), w, base.bias)
