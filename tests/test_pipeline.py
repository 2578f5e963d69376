"""compare_models end to end on tiny models: identical models, the PEFT shared-base path, the
own-response read, report save/load, and bad input stopping before any long work."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import tiny
from conftest import random_sae
from neuronlens import alignment
from neuronlens.errors import ConfigError, NeuronLensError
from neuronlens.saes import SAESet

CFG = alignment.AuditConfig(max_prompts_per_set=6, max_new_tokens=8)
DRIFT = ["drift"]  # risk scoring needs concept latents a random tiny SAE does not have; tested separately


@pytest.fixture(scope="module")
def saes():
    return SAESet({1: random_sae(64, 128, 1, seed=1), 3: random_sae(64, 128, 3, seed=3)})


def test_identical_models_show_no_drift(tiny_base_dir, saes):
    base = alignment.load_model(tiny_base_dir)
    rep = alignment.compare_models(base, alignment.load_model(tiny_base_dir), saes, probes=["finance"], metrics=DRIFT, config=CFG)
    assert all(ld.drift == 0 and ld.n_significant_latents == 0 for ld in rep.layers)
    assert "No drift detected" in rep.summary()
    assert not base.is_loaded  # lazily loaded handles are released after the audit


def test_risk_on_sae_without_concept_latents_is_inconclusive(tiny_base_dir, saes):
    cfg = alignment.AuditConfig(max_prompts_per_set=6, max_new_tokens=8, concepts=["fraud_scam", "disclaimers"])
    rep = alignment.compare_models(alignment.load_model(tiny_base_dir), alignment.load_model(tiny_base_dir), saes, probes=["finance"], config=cfg)
    assert rep.risk is not None and rep.verdict == "inconclusive" and rep.passed is None
    assert any("too few latents tied to" in r for r in rep.risk.reasons)
    assert "inconclusive" in rep.summary()


def _lossless_sae(d: int, layer: int):
    """A ReLU SAE that reconstructs every vector exactly: codes relu(x) and relu(-x), decoded as
    their difference (FVU 0)."""
    sae = random_sae(d, 2 * d, layer, arch="standard")
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_an_sae_that_reconstructs_the_probes_poorly_is_reported_without_recorded_metrics(tiny_base_dir, saes):
    """SAEs loaded without recorded quality (most SAELens and sparsify checkpoints) are measured on
    the audit's own base residuals: random SAEs leave more than half the variance unexplained and
    the report says so (the risk verdict cannot then pass), a lossless one does not."""
    base = alignment.load_model(tiny_base_dir)
    assert all(not saes[la].info.metrics for la in saes.layers)
    cfg = alignment.AuditConfig(max_prompts_per_set=6, max_new_tokens=8, concepts=["fraud_scam", "disclaimers"])
    rep = alignment.compare_models(base, alignment.load_model(tiny_base_dir), saes, probes=["finance"], config=cfg)
    poor = [w for w in rep.sae_warnings if "measured in this audit" in w]
    assert [w.split()[3] for w in poor] == ["1", "3"], rep.sae_warnings
    assert any(r.startswith("SAE too poor to trust: SAE for layer 1") for r in rep.risk.reasons)
    assert rep.verdict != "pass" and "FVU" in rep.summary()
    fvu = rep.sums.recon_total(1).fvu
    assert fvu > 0.5 and f"FVU {fvu:.2f}" in poor[0]
    lossless = SAESet({1: _lossless_sae(64, 1), 3: _lossless_sae(64, 3)})
    rep = alignment.compare_models(base, alignment.load_model(tiny_base_dir), lossless, probes=["finance"], metrics=DRIFT, config=CFG)
    assert rep.sae_warnings == [] and rep.sums.recon_total(3).fvu < 1e-6


def _adapter(tmp_path, base_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = alignment.load_model(base_dir).model
    pm = get_peft_model(model, LoraConfig(r=4, target_modules=["o_proj", "down_proj"], init_lora_weights=False, lora_alpha=16))
    pm.save_pretrained(str(tmp_path / "adapter"))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    merged = pm.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    alignment.load_model(base_dir).tokenizer.save_pretrained(tmp_path / "merged")
    return tmp_path / "adapter", tmp_path / "merged"


def test_adapter_on_shared_base_equals_merged_model(tmp_path, tiny_base_dir, saes):
    adapter, merged = _adapter(tmp_path, tiny_base_dir)
    base = alignment.load_model(tiny_base_dir)
    base.model  # noqa: B018 - loaded by the caller: must survive the audit unmodified
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    rep_a = alignment.compare_models(base, alignment.load_model(adapter), saes, probes=["finance", "legal"], metrics=DRIFT, config=CFG)
    after = base.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    rep_m = alignment.compare_models(base, alignment.load_model(merged), saes, probes=["finance", "legal"], metrics=DRIFT, config=CFG)
    for la, lm in zip(rep_a.layers, rep_m.layers):
        assert la.drift == pytest.approx(lm.drift, rel=1e-4) and la.drift > 0
    ta, tm = rep_a.drift_table(3), rep_m.drift_table(3)
    assert [round(t.ft_mean, 4) for t in ta] == [round(t.ft_mean, 4) for t in tm]
    assert rep_a.ft["kind"] == "peft" and rep_a.ft["base"]["manifest_sha256"] == base.digest


def test_peft_wraps_emit_no_checkpointing_future_warning(tmp_path, tiny_base_dir):
    """peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model; the
    FutureWarning it raises must not reach the user from NeuronLens's adapter load (handle and
    shared-base paths, including unload) or its organism LoRA training."""
    from peft import PeftModel

    from neuronlens.pipeline._residency import adapter_on
    from neuronlens.organisms._data import Example
    from neuronlens.organisms._train import LoRATrainConfig, train_lora

    adapter, _ = _adapter(tmp_path, tiny_base_dir)
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(alignment.load_model(tiny_base_dir).model, str(adapter)).unload()
    if not _checkpointing_warnings(raw):
        pytest.skip("this peft/transformers pair no longer warns: nothing to suppress")
    base, trained = alignment.load_model(tiny_base_dir), alignment.load_model(tiny_base_dir)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert alignment.load_model(adapter).model is not None
        with adapter_on(base.model, alignment.load_model(adapter)):
            pass
        cfg = LoRATrainConfig(rank=2, epochs=1, batch_size=1, max_answer_tokens=4)
        train_lora(trained.model, trained.tokenizer, [Example("Hello?", "Hi.")], cfg)
    assert not _checkpointing_warnings(seen), [str(w.message) for w in seen]


def _checkpointing_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, FutureWarning) and "is_gradient_checkpointing" in str(w.message)]


def test_own_response_read_and_report_round_trip(tmp_path, tiny_base_dir, saes):
    adapter, _ = _adapter(tmp_path, tiny_base_dir)
    cfg = alignment.AuditConfig(max_prompts_per_set=6, max_new_tokens=8, own_responses=True, concepts=["fraud_scam"], amplify_alpha=1.0)
    rep = alignment.compare_models(alignment.load_model(tiny_base_dir), alignment.load_model(adapter), saes, probes=["general"], config=cfg)
    assert rep.reads == ["same", "own", "amplified"]
    assert alignment.AuditConfig().amplify_alpha is None  # opt-in until the development zoos choose it
    own = rep.top_features(3, k=5, read="own")
    assert len(own) == 5 and all(f.read == "own" for f in own)
    path = rep.save(tmp_path / "out" / "report.json")
    assert (tmp_path / "out" / "report.stats.safetensors").is_file()
    back = alignment.AuditReport.load(path)
    assert back.summary() == rep.summary()
    assert [f.latent for f in back.top_features(3, k=5)] == [f.latent for f in rep.top_features(3, k=5)]
    assert back.top_features(1, k=3, probe_set="general")[0].probe_set == "general"
    data = json.loads(path.read_text())
    assert data["format"] == "neuronlens.report/1" and data["config"]["own_responses"] is True
    # the precision and device the fine-tune was read in travel with the report
    device = str(next(alignment.load_model(tiny_base_dir).model.parameters()).device)
    assert rep.runtime == back.runtime == data["runtime"] == {"dtype": "float32", "device": device}
    # without the sidecar, the saved top lists still answer; recomputation explains what is missing
    (tmp_path / "out" / "report.stats.safetensors").unlink()
    lean = alignment.AuditReport.load(path)
    assert [f.latent for f in lean.top_features(3, k=5)] == [f.latent for f in rep.top_features(3, k=5)]
    with pytest.raises(NeuronLensError, match="sidecar"):
        lean.drift_table(3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(layers=[7]), "out of range"),
        (dict(probes=["nope"]), "neither a built-in set"),
        (dict(metrics=["accuracy"]), "Unknown metric"),
        (dict(layers=[2]), r"No SAE was given for layer\(s\) \[2\]"),
    ],
)
def test_bad_input_stops_before_any_forward_pass(tiny_base_dir, saes, kwargs, match, monkeypatch):
    monkeypatch.setattr("neuronlens.pipeline._reference.response_sequences", lambda *a, **k: pytest.fail("long work started"))
    with pytest.raises(NeuronLensError, match=match):
        alignment.compare_models(alignment.load_model(tiny_base_dir), alignment.load_model(tiny_base_dir), saes, config=CFG, **kwargs)


def test_config_validation():
    with pytest.raises(ConfigError, match="positions"):
        alignment.AuditConfig(positions="middle").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="repeats"):
        alignment.AuditConfig(layers=[1, 1]).validate()


def test_gpt2_architecture_runs(tmp_path, tok):
    folder = tiny.save(tiny.tiny_gpt2(tok), tok, tmp_path / "gpt2")
    folder2 = tiny.save(tiny.tiny_gpt2(tok, seed=1), tok, tmp_path / "gpt2b")
    s = SAESet({1: random_sae(64, 96, 1)})
    rep = alignment.compare_models(alignment.load_model(folder), alignment.load_model(folder2), s, probes=["coding"], metrics=DRIFT, config=CFG)
    assert rep.layers[0].drift > 0


def test_chunked_encoding_gives_the_statistics_of_whole_batches(monkeypatch, tmp_path, tiny_base_dir, saes):
    """Wide SAEs are encoded a few prompts at a time (bounded memory); the sums must not change."""
    adapter, _ = _adapter(tmp_path, tiny_base_dir)
    cfg = alignment.AuditConfig(max_prompts_per_set=6, max_new_tokens=8, concepts=["fraud_scam"])
    run = lambda: alignment.compare_models(tiny_base_dir, str(adapter), saes, probes=["finance", "legal"], config=cfg)  # noqa: E731
    whole = run()
    monkeypatch.setattr("neuronlens.pipeline._accumulate.code_chunk_tokens", lambda d_sae: 5)  # a couple of prompts per chunk
    chunked = run()
    fw, fc = whole.sums.to_flat(), chunked.sums.to_flat()
    assert fw.keys() == fc.keys()
    for k in fw:
        # Chunks change the GEMMs' row count and so their blocking: each float32 code or
        # reconstruction may differ in its last bits (measured here: the reconstruction error sums
        # by ~1e-8 relative), and the float64 sums of them only inherit that. Exactness would
        # hold on one CPU's kernels, not on any BLAS.
        scale = max(fw[k].abs().max().item(), 1.0)
        torch.testing.assert_close(fc[k], fw[k], rtol=1e-5, atol=1e-6 * scale, msg=k)
    assert [t.latent for t in whole.top[3]] == [t.latent for t in chunked.top[3]]


def test_one_fault_one_error_type(tiny_base_dir, saes, monkeypatch):
    """A layer out of range is a ConfigError wherever it is caught (the audit's settings, or
    load_sae); an SAE that does not fit the model is an SAEError (given as a folder or in code)."""
    from neuronlens.errors import SAEError

    monkeypatch.setattr("neuronlens.pipeline._reference.response_sequences", lambda *a, **k: pytest.fail("long work started"))
    base = alignment.load_model(tiny_base_dir)
    with pytest.raises(ConfigError, match="out of range"):
        alignment.compare_models(base, alignment.load_model(tiny_base_dir), saes, config=CFG, layers=[7], metrics=DRIFT)
    with pytest.raises(ConfigError, match="out of range"):
        alignment.load_sae(base, layers=[7], train=False)
    narrow = {1: random_sae(32, 64, 1)}  # d_in 32 against the model's 64
    with pytest.raises(SAEError, match="has d_in 32, the model has d_model 64"):
        alignment.compare_models(base, alignment.load_model(tiny_base_dir), narrow, config=CFG, metrics=DRIFT)


@pytest.mark.parametrize("path", ["adapter", "merged"])
def test_a_registered_one_side_read_needs_no_other_change(tmp_path, tiny_base_dir, saes, monkeypatch, path):
    """The extension point of pipeline/_reads.py: a function producing text, which model reads it,
    one registry entry. 'echo' has the base model read its own responses again (with the adapter
    switched off where it shares the base weights, the base reloaded where it was released): its
    two sides read the same tokens with the same model, so every prompt's difference is exactly 0."""
    from neuronlens.pipeline import _reads

    echo = _reads.OneSideRead("echo", "base", lambda inputs: list(inputs.base_sequences), lambda cfg: True,
                              "Base model on its own responses again", "echo_pass_s")
    monkeypatch.setattr(_reads, "ONE_SIDE_READS", (*_reads.ONE_SIDE_READS, echo))
    ft = _adapter(tmp_path, tiny_base_dir)[path == "merged"]
    rep = alignment.compare_models(tiny_base_dir, str(ft), saes, probes=["finance"], metrics=DRIFT, config=CFG)
    assert rep.reads == ["same", "own", "echo"] and "echo_pass_s" in rep.timings
    assert all(ps["responses_sha256"]["echo"] == ps["responses_sha256"]["same"] for ps in rep.probe_sets)
    for layer in (1, 3):
        s = rep.sums.latent_total("echo", layer)
        # same model, same batches, same kernels: bit for bit (unlike two batchings, see the chunking test)
        assert s.p_diff == 6 and torch.equal(s.base_sum, s.ft_sum) and torch.equal(s.pd_sum, torch.zeros_like(s.pd_sum))
        assert not any(f.significant for f in rep.drift_table(layer, read="echo"))
    assert rep.layers[0].drift > 0  # the fine-tune itself did drift


def _saved_report(tmp_path):
    report = alignment.AuditReport(
        base={"name": "b"}, ft={"name": "f"}, saes=[], probe_sets=[], config=alignment.AuditConfig(layers=[1], fdr=0.1),
        layers=[alignment.LayerDrift(1, 0.25, 0.9, 0.3, 40, {"finance": 0.25})], top={}, neuronlens_version="0", created_at="now",
    )
    return report.save(tmp_path / "r" / "report.json")


def test_a_report_carries_its_audit_config_and_older_reports_still_load(tmp_path):
    path = _saved_report(tmp_path)
    data = json.loads(path.read_text())
    assert data["config"] == alignment.AuditConfig(layers=[1], fdr=0.1).to_dict()
    back = alignment.AuditReport.load(path)
    assert isinstance(back.config, alignment.AuditConfig) and back.config.fdr == 0.1 and back.config.layers == [1]
    del data["config"]["min_prompts_for_pass"]  # a report written before a setting existed: its default
    data["layers"][0]["drift"] = "inf"  # how report.json writes a non-finite number: read back as one
    path.write_text(json.dumps(data))
    back = alignment.AuditReport.load(path)
    assert back.config.min_prompts_for_pass == alignment.AuditConfig.min_prompts_for_pass
    assert back.layers[0].drift == float("inf")


@pytest.mark.parametrize("field,value", [("drift", None), ("n_tokens", "40"), ("by_probe", {"finance": None})])
def test_a_garbled_number_in_a_report_is_a_report_error_when_it_loads(tmp_path, field, value):
    """`"drift": null` loaded, then failed in summary() with a TypeError."""
    from neuronlens.errors import ReportError

    path = _saved_report(tmp_path)
    data = json.loads(path.read_text())
    data["layers"][0][field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=rf"layers\[0\]\.{field}") as exc:
        alignment.AuditReport.load(path)
    assert "re-run the audit" in exc.value.fix
