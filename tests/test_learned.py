"""The Activation Difference Lens (neuronlens.learned) on tiny random-init Llamas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import tiny

from neuronlens.errors import ConfigError, DataError
from neuronlens.learned import (
    NORM_FROM,
    DifferenceSums,
    LensSettings,
    collect_differences,
    neutral_prompts,
    what_it_learned,
)
from neuronlens.models import load_model

LAYER = 1
"""The planted layer: also the default lens layer of a 4-layer model, int(0.5 * 3)."""
TOKEN = 123
"""The token whose unembedding row the planted shift points along."""


def _settings(**kw) -> LensSettings:
    base = dict(layers=(0, LAYER), n_positions=3, max_tokens=12, top_k=5, steer_tokens=6, token_budget=256)
    return LensSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(neutral_prompts().prompts[:12])


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tok) -> dict:
    """A base and a fine-tune whose residual after layer LAYER is shifted by v for every token:
    the same weights plus a down_proj bias v at that layer (zero everywhere else), with v along
    the unembedding row of TOKEN."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("planted")
    base = tiny.tiny_llama(tok)
    tiny.save(base, tok, root / "base")
    cfg = base.config.to_dict()
    cfg["mlp_bias"] = True
    ft = LlamaForCausalLM(type(base.config).from_dict(cfg)).eval()
    missing, unexpected = ft.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("bias") for k in missing)
    row = base.lm_head.weight[TOKEN].detach()
    v = row / row.norm()
    with torch.no_grad():
        for name, p in ft.named_parameters():
            if name.endswith("bias"):
                p.zero_()
        ft.model.layers[LAYER].mlp.down_proj.bias.copy_(v)
    tiny.save(ft, tok, root / "ft")
    return {"base": root / "base", "ft": root / "ft", "v": v}


def _handles(pair: dict):
    return load_model(pair["base"]), load_model(pair["ft"])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def test_planted_direction_and_token_are_recovered(planted, texts):
    base, ft = _handles(planted)
    lens = what_it_learned(base, ft, _settings(), texts=texts)
    before, at = lens.layers
    assert (before.layer, at.layer) == (0, LAYER)
    assert before.pooled.diff_norm < 1e-6  # nothing changed before the planted layer
    assert _cos(at.sums.pooled_diff(), planted["v"]) > 0.99
    assert at.pooled.promoted[0].token_id == TOKEN
    assert all(p.promoted[0].token_id == TOKEN for p in at.positions)
    assert at.pooled.suppressed[0].token_id != TOKEN
    assert [p.position for p in at.positions] == [1, 2, 3] and at.pooled.position is None
    assert math.isclose(at.steering.strength, at.base_norm, rel_tol=1e-9)  # factor 1 x the typical norm
    doc = json.loads(json.dumps(lens.to_dict()))
    assert doc["layers"][1]["pooled"]["promoted"][0]["token_id"] == TOKEN
    assert len(doc["layers"][1]["steering"]["samples"]) == 3
    text = lens.render()
    assert text.startswith("What this fine-tune appears to have been trained on")
    assert repr(at.pooled.promoted[0].token) in text


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory, tok) -> dict:
    """A fine-tune with random noise on every o_proj/down_proj: a shift that differs by position."""
    root = tmp_path_factory.mktemp("perturbed")
    model = tiny.tiny_llama(tok)
    tiny.save(model, tok, root / "base")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "o_proj" in name or "down_proj" in name:
                p.add_(0.2 * p.std() * torch.randn(p.shape, generator=g))
    tiny.save(model, tok, root / "ft")
    return {"base": root / "base", "ft": root / "ft"}


@torch.inference_mode()
def _manual_means(pair: dict, tok, texts: list[str], s: LensSettings) -> torch.Tensor:
    """Mean ft - base of HF hidden_states[LAYER + 1] (block LAYER's output) at positions 1..n."""
    from transformers import AutoModelForCausalLM

    models = [AutoModelForCausalLM.from_pretrained(pair[k]).eval() for k in ("base", "ft")]
    diffs = []
    for text in texts:
        ids = torch.tensor([tok(text, add_special_tokens=True)["input_ids"][: s.max_tokens]])
        if ids.shape[1] <= s.n_positions:
            continue
        b, f = (m(input_ids=ids, output_hidden_states=True).hidden_states[LAYER + 1][0] for m in models)
        diffs.append((f - b)[1 : s.n_positions + 1].double())
    return torch.stack(diffs).mean(0)


def test_positions_start_after_the_first_token(perturbed, tok, texts):
    s = _settings(layers=(LAYER,))
    sums = collect_differences(*_handles(perturbed), s, texts=texts)[LAYER]
    manual = _manual_means(perturbed, tok, texts, s)
    assert sums.count.tolist() == [len(texts)] * s.n_positions
    assert torch.allclose(sums.mean_diff(), manual, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(sums.mean_diff()[0], manual[1], rtol=1e-2, atol=0)  # positions differ: the test can tell them apart


def test_partial_sums_merge_to_the_whole(perturbed, texts):
    s = _settings(token_budget=1)  # every text in a batch of its own: the same float32 activations in every run
    pair = _handles(perturbed)
    whole = collect_differences(*pair, s, texts=texts)
    first = collect_differences(*pair, s, texts=texts[:5])
    rest = collect_differences(*pair, s, texts=texts[5:])
    for layer, w in whole.items():
        merged = first[layer].merge(rest[layer])
        for name, t in merged.tensors().items():
            assert t.dtype == torch.float64
            assert torch.equal(t, getattr(first[layer], name) + getattr(rest[layer], name))
            assert torch.allclose(t, w.tensors()[name], rtol=1e-12, atol=0), name  # float64 reassociation only


def test_sums_of_exact_values_merge_exactly():
    g = torch.Generator().manual_seed(0)
    base, ft = (torch.randint(-64, 64, (40, 8), generator=g).float() / 8 for _ in range(2))
    pos = torch.arange(40) % 9
    whole, a, b = DifferenceSums.zeros(4, 8), DifferenceSums.zeros(4, 8), DifferenceSums.zeros(4, 8)
    whole.add(base, ft, pos)
    a.add(base[:17], ft[:17], pos[:17])
    b.add(base[17:], ft[17:], pos[17:])
    merged = a.merge(b)
    assert torch.equal(merged.diff_sum, whole.diff_sum) and torch.equal(merged.count, whole.count)
    assert torch.equal(merged.norm_count, whole.norm_count)
    assert whole.count.tolist() == [float((pos == p).sum()) for p in (1, 2, 3, 4)]  # position 0 never counted
    assert int(whole.norm_count) == int((pos >= NORM_FROM).sum())


def test_steered_samples_are_seeded(planted, texts):
    base, ft = _handles(planted)
    s = _settings(layers=(LAYER,), steer_factor=4.0)
    one, again = (what_it_learned(base, ft, s, texts=texts).layers[0].steering for _ in range(2))
    other = what_it_learned(base, ft, _settings(layers=(LAYER,), steer_factor=4.0, seed=1), texts=texts).layers[0].steering
    assert one.steered == again.steered and one.unsteered == again.unsteered
    assert one.steered != other.steered
    assert one.steered != one.unsteered  # the vector moves the generation
    greedy = _settings(layers=(LAYER,), temperature=0.0)
    a, b = (what_it_learned(base, ft, greedy, texts=texts).layers[0].steering for _ in range(2))
    assert a.steered == b.steered


def _lora_adapter(base_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(out)
    return out


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's own read
def test_peft_adapter_is_toggled_on_one_model(tmp_path, tiny_base_dir, tok, texts):
    adapter = _lora_adapter(tiny_base_dir, tmp_path / "adapter")
    base = load_model(tiny_base_dir)
    ft = load_model(adapter, base=base)
    s = _settings(layers=(LAYER,))
    lens = what_it_learned(base, ft, s, texts=texts)
    assert not base.is_loaded  # the base side was the adapter's model with the adapter disabled
    merged = ft.model.merge_and_unload()
    tiny.save(merged, tok, tmp_path / "merged")
    full = what_it_learned(base, load_model(tmp_path / "merged"), s, texts=texts)
    a, b = lens.layers[0].sums.pooled_diff(), full.layers[0].sums.pooled_diff()
    assert a.norm() > 1e-3
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(a.norm()))
    assert lens.layers[0].steering.unsteered == full.layers[0].steering.unsteered  # both steer the same base


def test_default_texts_are_the_base_models_answers(planted):
    base, ft = _handles(planted)
    lens = what_it_learned(base, ft, _settings(layers=(LAYER,), n_texts=4, text_tokens=12, steer=False))
    assert lens.n_texts >= 1 and "SAE-corpus" in lens.text_source
    assert lens.layers[0].steering is None
    assert not base.is_loaded and not ft.is_loaded  # released: neither was loaded before


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"max_tokens": 5}, "max_tokens"),
        ({"steer_factor": float("nan")}, "steer_factor"),
        ({"steer_factor": 0.0}, "steer_factor"),
        ({"temperature": -1.0}, "temperature"),
        ({"n_positions": 0}, "n_positions"),
        ({"layers": (0, 9)}, "9"),
    ],
)
def test_bad_settings_fail_before_loading(planted, texts, kw, word):
    base, ft = _handles(planted)
    with pytest.raises(ConfigError, match=word):
        what_it_learned(base, ft, _settings(**kw), texts=texts)
    assert not base.is_loaded and not ft.is_loaded


def test_too_short_texts_are_refused(planted):
    base, ft = _handles(planted)
    with pytest.raises(DataError, match="tokens"):
        what_it_learned(base, ft, _settings(), texts=["hi", "ok"])


def test_identical_models_show_no_difference(planted, texts):
    base, same = load_model(planted["base"]), load_model(planted["base"])
    lens = what_it_learned(base, same, _settings(layers=(LAYER,), steer=False), texts=texts)
    assert lens.layers[0].pooled.diff_norm == 0.0
    assert "no difference" in lens.render()
