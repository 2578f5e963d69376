"""Model-diff amplification (neuronlens.amplify) on tiny random-init Llamas: the cached, batched
decoder against a plain recompute-everything reference, PEFT toggling against two separate
models, seeded sampling, the cache, the refused inputs, and alpha 0 against the own responses."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import tiny
from neuronlens.amplify import AmplifiedSequence, amplified_responses
from neuronlens.amplify import _api as amplify_api
from neuronlens.amplify import _sides as amplify_sides
from neuronlens.amplify._decode import Decoding, MixedAdapterBatch, Row, TwoSides, generate_rows
from neuronlens.amplify._sides import model_pair
from neuronlens.errors import ConfigError, ModelLoadError, ProbeError
from neuronlens.models import load_model
from neuronlens.probes import ProbeSet, load_probe_set, prompt_ids, response_sequences, stop_ids

N_NEW = 10
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def probes() -> ProbeSet:
    ps = load_probe_set("legal", 6)
    assert len({len(p) for p in ps.prompts}) > 1  # prompts of several lengths: left padding is exercised
    return ps


@pytest.fixture(scope="module")
def ft_dir(tmp_path_factory, tok) -> Path:
    """A full fine-tune: the tiny base with every weight perturbed."""
    model = tiny.tiny_llama(tok)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))
    return tiny.save(model, tok, tmp_path_factory.mktemp("amp") / "ft")


def _lora_adapter(tok, folder: Path, *, hidden: int = 64) -> Path:
    """A LoRA adapter on the tiny base (seed 0) with a nonzero lora_B, so it changes the outputs;
    its lm_head update on the EOS row is 3x larger, so that some answers stop early."""
    from peft import LoraConfig, get_peft_model

    from neuronlens.models._peft import peft_wrap_quietly

    with peft_wrap_quietly():
        model = get_peft_model(tiny.tiny_llama(tok, hidden=hidden), LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
                if "lm_head" in name:
                    p[tok.eos_token_id] *= 3.0
    model.save_pretrained(folder, save_embedding_layers=False)
    return folder


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tok) -> Path:
    return _lora_adapter(tok, tmp_path_factory.mktemp("amp") / "lora")


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory, tok, tiny_base_dir, lora_dir) -> Path:
    """The LoRA adapter merged into a copy of the base: the same fine-tune as a full checkpoint."""
    merged = load_model(lora_dir, base=tiny_base_dir).model.merge_and_unload()
    return tiny.save(merged, tok, tmp_path_factory.mktemp("amp") / "merged")


def _answers(seqs: list[AmplifiedSequence]) -> list[tuple[int, ...]]:
    return [s.response_ids for s in seqs]


# -- (a) the cached batched decoder against a reference without cache or batching -------------


@torch.inference_mode()
def _reference(ft_nn, base_nn, prompt: tuple[int, ...], alpha: float, stops: set[int]) -> tuple[int, ...]:
    """Greedy amplified answer recomputing both models over the whole sequence at every step."""
    seq, out = list(prompt), []
    for _ in range(N_NEW):
        x = torch.tensor([seq])
        lf, lb = ft_nn(x).logits[0, -1].float(), base_nn(x).logits[0, -1].float()
        t = int(torch.argmax(lf + alpha * (lf - lb)))
        if t in stops:
            break
        out.append(t)
        seq.append(t)
    return tuple(out)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_cached_batched_decoder_matches_the_full_recompute_reference(tok, tiny_base_dir, ft_dir, probes, alpha):
    base, ft = load_model(tiny_base_dir), load_model(ft_dir)
    got = _answers(amplified_responses(base, ft, probes, alpha=alpha, max_new_tokens=N_NEW, use_cache=False))
    stops = stop_ids(tok, ft.model)
    want = [_reference(ft.model, base.model, prompt_ids(tok, p), alpha, stops) for p in probes.prompts]
    assert got == want
    own = [s.response_ids for s in response_sequences(ft, [probes], N_NEW, use_cache=False)]
    assert got != own  # amplification changed some answer


# -- (b) one PEFT model toggled against two separate models -------------------------------------


@pytest.mark.parametrize("alpha,strategy", [(0.5, "auto"), (2.0, "auto"), (2.0, "two_forwards"), (2.0, "disable_adapter")])
def test_peft_toggling_matches_two_separate_models(tiny_base_dir, lora_dir, merged_dir, probes, alpha, strategy):
    """One PEFT model for both sides - in one mixed-adapter batch (the default for LoRA), or in two
    forwards with the adapter layers' flags off, or under peft's own ``disable_adapter()`` (the
    fallbacks) - against a base and a merged copy held side by side."""
    base, adapter, merged = load_model(tiny_base_dir), load_model(lora_dir, base=tiny_base_dir), load_model(merged_dir)
    kw = dict(alpha=alpha, max_new_tokens=N_NEW, use_cache=False, strategy=strategy)
    toggled = _answers(amplified_responses(base, adapter, probes, **kw))
    assert not adapter.is_loaded and not base.is_loaded  # one model, injected into the base and released
    separate = _answers(amplified_responses(base, merged, probes, **kw))
    assert toggled == separate
    own_base = [s.response_ids for s in response_sequences(base, [probes], N_NEW, use_cache=False)]
    assert toggled != own_base  # the adapter was on for the fine-tuned side


def test_each_strategy_builds_its_own_sides(tiny_base_dir, lora_dir):
    base, adapter = load_model(tiny_base_dir), load_model(lora_dir, base=tiny_base_dir)
    with model_pair(base, adapter, "auto") as pair:
        assert isinstance(pair, MixedAdapterBatch)
    with model_pair(base, adapter, "two_forwards") as pair:
        assert isinstance(pair, TwoSides) and pair.base.toggle != pair.ft_model.disable_adapter
    with model_pair(base, adapter, "disable_adapter") as pair:
        assert isinstance(pair, TwoSides) and pair.base.toggle == pair.ft_model.disable_adapter
    with pytest.raises(ConfigError, match="strategy"):
        amplified_responses(base, adapter, ["Hi"], alpha=1.0, strategy="mixed")


def test_an_injected_adapter_leaves_a_loaded_base_as_it_was(tiny_base_dir, lora_dir, probes):
    base = load_model(tiny_base_dir, lazy=False)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    amplified_responses(base, load_model(lora_dir, base=tiny_base_dir), probes, alpha=1.0, max_new_tokens=3, use_cache=False)
    assert base.is_loaded and not any("lora" in n for n, _ in base.model.named_modules())
    after = base.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


# -- (c) seeded sampling --------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible_and_seeds_differ(tiny_base_dir, ft_dir, probes):
    base, ft = load_model(tiny_base_dir), load_model(ft_dir)
    kw = dict(alpha=1.0, max_new_tokens=N_NEW, samples=3, greedy=False, use_cache=False)
    first = amplified_responses(base, ft, probes, seed=0, **kw)
    assert [(s.prompt_index, s.sample) for s in first] == [(i, j) for i in range(len(probes.prompts)) for j in range(3)]
    assert _answers(amplified_responses(base, ft, probes, seed=0, **kw)) == _answers(first)
    # one row per batch: the batching does not change a sample
    assert _answers(amplified_responses(base, ft, probes, seed=0, token_budget=16, **kw)) == _answers(first)
    other = _answers(amplified_responses(base, ft, probes, seed=1, **kw))
    assert other != _answers(first)
    assert len(set(_answers(first))) > len(probes.prompts)  # the samples of one prompt differ


# -- the cache ------------------------------------------------------------------------------------


def test_answers_are_cached_by_settings(tiny_base_dir, ft_dir, probes, monkeypatch):
    base, ft = load_model(tiny_base_dir), load_model(ft_dir)
    first = amplified_responses(base, ft, probes, alpha=2.0, max_new_tokens=4)

    def no_generation(*a, **k):
        raise AssertionError("generated again")

    monkeypatch.setattr(amplify_api, "generate_rows", no_generation)
    assert amplified_responses(base, ft, probes, alpha=2.0, max_new_tokens=4) == first
    assert not base.is_loaded and not ft.is_loaded  # answered from the cache: no model loaded
    for changed in (dict(alpha=3.0, max_new_tokens=4), dict(alpha=2.0, max_new_tokens=5), dict(alpha=2.0, max_new_tokens=4, greedy=False)):
        with pytest.raises(AssertionError, match="generated again"):
            amplified_responses(base, ft, probes, **changed)


# -- (d) bad input is refused before any model loads ---------------------------------------------


@pytest.mark.parametrize("alpha", [0, 0.0, -1.0, math.nan, math.inf, -math.inf, "2", True])
def test_bad_alpha_is_refused_before_any_model_loads(tiny_base_dir, ft_dir, probes, alpha):
    base, ft = load_model(tiny_base_dir), load_model(ft_dir)
    with pytest.raises(ConfigError, match="alpha") as err:
        amplified_responses(base, ft, probes, alpha=alpha, max_new_tokens=4)
    assert err.value.fix and "alpha" in err.value.fix
    assert not base.is_loaded and not ft.is_loaded


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(samples=2), "greedy"),
        (dict(greedy=False, temperature=0.0), "temperature"),
        (dict(greedy=False, temperature=math.nan), "temperature"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(samples=0, greedy=False), "samples"),
        (dict(token_budget=0), "token_budget"),
    ],
)
def test_bad_settings_are_refused(tiny_base_dir, ft_dir, probes, settings, match):
    base, ft = load_model(tiny_base_dir), load_model(ft_dir)
    with pytest.raises(ConfigError, match=match):
        amplified_responses(base, ft, probes, **{"alpha": 1.0, "max_new_tokens": 4, **settings})


def test_no_prompts_is_refused(tiny_base_dir, ft_dir):
    with pytest.raises(ConfigError, match="at least one prompt"):
        amplified_responses(load_model(tiny_base_dir), load_model(ft_dir), [], alpha=1.0)


def test_different_tokenizers_are_refused(tmp_path, tiny_base_dir, probes):
    other_tok = tiny.tiny_tokenizer(vocab_size=300)
    other = load_model(tiny.save(tiny.tiny_llama(other_tok), other_tok, tmp_path / "other"))
    base = load_model(tiny_base_dir)
    with pytest.raises(ModelLoadError, match="different tokenizers") as err:
        amplified_responses(base, other, probes, alpha=1.0, max_new_tokens=4)
    assert "fine-tuned from" in err.value.fix and not base.is_loaded and not other.is_loaded


def test_different_vocabulary_sizes_are_refused(tmp_path, tok, tiny_base_dir, probes):
    model = tiny.tiny_llama(tok)
    model.resize_token_embeddings(len(tok) + 8)
    wide = load_model(tiny.save(model, tok, tmp_path / "wide"))
    with pytest.raises(ModelLoadError, match="output logits"):
        amplified_responses(load_model(tiny_base_dir), wide, probes, alpha=1.0, max_new_tokens=4)


@pytest.mark.parametrize("precheck", [True, False])
def test_an_adapter_that_does_not_fit_its_base_is_refused(tmp_path, tok, tiny_base_dir, probes, monkeypatch, precheck):
    """Refused from the tensors' shapes before the weights load; without that check, when peft
    applies it to the resident base (which is then restored and released)."""
    narrow = _lora_adapter(tok, tmp_path / "narrow", hidden=32)  # trained on a 32-wide model
    base, adapter = load_model(tiny_base_dir), load_model(narrow, base=tiny_base_dir)
    monkeypatch.setattr(amplify_api, "generate_rows", lambda *a, **k: pytest.fail("generation started"))
    if not precheck:
        monkeypatch.setattr(amplify_sides, "check_fine_tune_fits", lambda *a: None)
    match = "does not fit its base" if precheck else "cannot be loaded beside its base"
    with pytest.raises(ModelLoadError, match=match) as err:
        amplified_responses(base, adapter, probes, alpha=1.0, max_new_tokens=4)
    assert "base" in err.value.fix and not base.is_loaded


def test_a_prompt_too_long_for_the_context_is_refused(tiny_base_dir, ft_dir):
    base, ft = load_model(tiny_base_dir), load_model(ft_dir)
    with pytest.raises(ProbeError, match="do not fit the model's context"):
        amplified_responses(base, ft, ["budget " * 600], alpha=1.0, max_new_tokens=4)
    assert not base.is_loaded and not ft.is_loaded


def test_an_adapter_without_a_base_is_refused(tiny_base_dir, lora_dir, probes):
    adapter = dataclasses.replace(load_model(lora_dir, base=tiny_base_dir), base=None)
    with pytest.raises(ModelLoadError, match="no base model"):
        amplified_responses(load_model(tiny_base_dir), adapter, probes, alpha=1.0, max_new_tokens=4)


# -- (e) alpha 0 is the fine-tune's own generation ------------------------------------------------


def _use_strategy(monkeypatch, strategy: str) -> None:
    if strategy != "mixed":
        monkeypatch.setattr(amplify_sides, "supports_mixed_batch", lambda model: False)
    if strategy == "disable_adapter":
        monkeypatch.setattr(amplify_sides, "_flag_is_read", lambda m: False)


@pytest.mark.parametrize("kind", ["full", "mixed", "flags"])
def test_alpha_zero_gives_the_own_responses(tok, tiny_base_dir, ft_dir, lora_dir, probes, kind, monkeypatch):
    """Through the internal decoder (the public API refuses alpha 0): both sides run, the base
    side's logits are multiplied by 0, and the answers equal ``response_sequences`` token for token."""
    base = load_model(tiny_base_dir)
    ft = load_model(ft_dir) if kind == "full" else load_model(lora_dir, base=tiny_base_dir)
    own = [s.response_ids for s in response_sequences(ft, [probes], N_NEW, use_cache=False)]
    assert any(len(a) < N_NEW for a in own) and any(len(a) == N_NEW for a in own)  # some stop early, some run on
    ft.release()
    _use_strategy(monkeypatch, kind)
    rows = [Row(prompt_ids(tok, p)) for p in probes.prompts]
    with model_pair(base, ft) as pair:
        assert isinstance(pair, MixedAdapterBatch) == (kind == "mixed")
        dec = Decoding(alpha=0.0, max_new_tokens=N_NEW, pad_id=tok.pad_token_id, stop_ids=frozenset(stop_ids(tok, pair.ft_model)))
        assert generate_rows(pair, rows, dec) == own
        assert generate_rows(pair, rows, dataclasses.replace(dec, alpha=2.0)) != own
