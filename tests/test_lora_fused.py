"""models.fused_lora: a PEFT model's plain LoRA layers run as one addmm each, or, for calls of
many rows in float32, with the adapter merged into a temporary weight (the audit's passes use it,
pipeline/_residency.py). Same outputs as peft's own forward to float32 rounding; peft's forward
wherever the plain case does not hold; every layer restored on exit."""

from __future__ import annotations

import pytest
import torch

import tiny
from neuronlens.models import fused_lora, peft_wrap_quietly

pytestmark = pytest.mark.usefixtures("one_thread")


def _lora(tok, **cfg):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    with peft_wrap_quietly():
        model = get_peft_model(tiny.tiny_llama(tok), LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "o_proj", "down_proj"],
                                                                  init_lora_weights=False, **cfg))
    return model.eval()


def _ids(tok):
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, len(tok), (3, 17), generator=g)


def _addmm_calls(monkeypatch):
    """The first argument's shape of every torch.addmm call: activations [rows, d_out] for the
    fused addmm, the base weight [d_out, d_in] for a merged call."""
    calls, real = [], torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(tuple(a[0].shape)) or real(*a, **k))
    return calls


def _weights(model) -> set[tuple[int, ...]]:
    return {tuple(m.base_layer.weight.shape) for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}


def test_fused_forward_equals_peft_and_is_restored(tok, monkeypatch):
    model, ids = _lora(tok), _ids(tok)
    with torch.inference_mode():
        want = model(input_ids=ids).logits
        calls = _addmm_calls(monkeypatch)
        with fused_lora(model) as same:
            assert same is model
            got = model(input_ids=ids).logits
        n_fused = len(calls)
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert n_fused == 3 * 4  # three targets in each of the four blocks, one addmm each
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # float32, the same products summed in another order
    assert (got - plain).abs().max() > 1e-3  # the adapter is not a no-op: the comparison can fail
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_disabled_adapter_inside_the_fused_context_is_the_base_model(tok, monkeypatch):
    model, ids = _lora(tok), _ids(tok)
    with torch.inference_mode():
        with model.disable_adapter():
            want = model(input_ids=ids).logits
        calls = _addmm_calls(monkeypatch)
        with fused_lora(model), model.disable_adapter():
            got = model(input_ids=ids).logits
    assert calls == [] and torch.equal(got, want)


@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed:UserWarning")
@pytest.mark.parametrize("case", ["dora", "dropout_training", "lora_bias"])
def test_anything_but_plain_lora_runs_pefts_own_forward(tok, monkeypatch, case):
    cfg = {"dora": {"use_dora": True}, "dropout_training": {"lora_dropout": 0.5}, "lora_bias": {"lora_bias": True}}[case]
    model, ids = _lora(tok, **cfg), _ids(tok)
    if case == "dropout_training":
        model.train()
    with torch.no_grad():
        torch.manual_seed(5)
        want = model(input_ids=ids).logits
        calls = _addmm_calls(monkeypatch)
        with fused_lora(model):
            torch.manual_seed(5)  # the same dropout masks
            got = model(input_ids=ids).logits
    assert calls == [] and torch.equal(got, want)


def test_merged_calls_equal_peft_to_float32_rounding(tok, monkeypatch):
    """merge_min_rows=0: every layer runs x (W + s B A)^T, one merged weight per call."""
    model, ids = _lora(tok), _ids(tok)
    with torch.inference_mode():
        want = model(input_ids=ids).logits
        calls = _addmm_calls(monkeypatch)
        with fused_lora(model, merge_min_rows=0):
            got = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert len(calls) == 3 * 4 and set(calls) == _weights(model)  # every call merged a weight, none touched activations
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # the adapter's product rounded into W: float32 rounding
    assert (got - plain).abs().max() > 1e-3


def test_default_merges_large_calls_only(tok, monkeypatch):
    """Default: a call merges from MERGE_MIN_ROWS rows (and the layer's larger dimension) up; a
    generation-sized call keeps the addmm on its activations."""
    from neuronlens.models import MERGE_MIN_ROWS

    model = _lora(tok)
    small = _ids(tok)
    large = torch.randint(3, len(tok), (MERGE_MIN_ROWS // 16, 16), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode(), fused_lora(model):
        calls = _addmm_calls(monkeypatch)
        model(input_ids=small)
        small_calls = list(calls)
        calls.clear()
        model(input_ids=large)
    assert {c[0] for c in small_calls} == {small.numel()}  # [rows, d_out]: activations
    assert set(calls) == _weights(model)


def test_half_precision_never_merges(tok, monkeypatch):
    """In bf16 the adapter's small product would be rounded away in a merged weight."""
    model = _lora(tok).to(torch.bfloat16)
    with torch.inference_mode(), fused_lora(model, merge_min_rows=0):
        calls = _addmm_calls(monkeypatch)
        model(input_ids=_ids(tok))
    assert len(calls) == 3 * 4 and {c[0] for c in calls} == {_ids(tok).numel()}


def test_a_model_without_lora_is_left_alone(tok):
    model = tiny.tiny_llama(tok)
    with fused_lora(model):
        assert not any("forward" in m.__dict__ for m in model.modules())
