"""Broken SAEs (issue #21): non-finite weights, impossible k, missing or negative JumpReLU
thresholds, weights that do not fit their config, quality metrics that are NaN, and `sae=`
arguments of the wrong type. Each is a clear SAEError (exit 2 on the CLI) or a quality warning,
never a traceback or a silent pass."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import random_sae
from neuronlens import alignment, cli
from neuronlens.errors import SAEError
from neuronlens.saes import SAESet, as_sae_set, load_saelens, load_sparsify, save_saelens
from neuronlens.saes._formats import discover

WEIGHTS = "sae_weights.safetensors"
D_IN, D_SAE = 8, 16


def _saelens(tmp_path: Path, arch: str = "topk", *, tensors=None, drop=(), cfg=None, layer: int = 0) -> Path:
    """A SAELens folder of a random SAE (d_in 8, d_sae 16) with some tensors replaced or dropped
    and some cfg.json keys replaced (a value of None removes the key)."""
    folder = save_saelens(random_sae(D_IN, D_SAE, layer=layer, arch=arch), tmp_path / "sae" / f"layer_{layer}")
    weights = {k: v for k, v in load_file(str(folder / WEIGHTS)).items() if k not in drop}
    save_file({**weights, **(tensors or {})}, str(folder / WEIGHTS))
    config = {**json.loads((folder / "cfg.json").read_text()), **(cfg or {})}
    (folder / "cfg.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return folder


def _with(name: str, index: tuple[int, ...], value: float, arch: str = "topk") -> dict[str, torch.Tensor]:
    t = random_sae(D_IN, D_SAE, layer=0, arch=arch).tensors()[name].clone()
    t[index] = value
    return {name: t}


def _sparsify(tmp_path: Path, *, tensors=None, cfg=None) -> Path:
    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "sparsify" / "layers.0"
    folder.mkdir(parents=True)
    w = {"encoder.weight": torch.randn(D_SAE, D_IN, generator=g), "encoder.bias": torch.randn(D_SAE, generator=g),
         "W_dec": torch.randn(D_SAE, D_IN, generator=g), "b_dec": torch.randn(D_IN, generator=g)}
    save_file({**w, **(tensors or {})}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"num_latents": D_SAE, "k": 4, "d_in": D_IN, **(cfg or {})}))
    return folder


# -- 1. non-finite weights -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch,name,index,value",
    [
        ("topk", "W_dec", (3, 2), math.nan),
        ("standard", "W_enc", (0, 0), math.inf),
        ("topk", "b_enc", (5,), -math.inf),
        ("standard", "b_dec", (1,), math.nan),
        ("jumprelu", "threshold", (7,), math.nan),
    ],
)
def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path, arch, name, index, value):
    folder = _saelens(tmp_path, arch, tensors=_with(name, index, value, arch))
    with pytest.raises(SAEError) as exc:
        load_saelens(folder)
    assert str(folder / WEIGHTS) in exc.value.problem and f"'{name}'" in exc.value.problem
    assert "1 NaN/Inf value(s)" in exc.value.problem and "Re-download or re-train" in exc.value.fix


def test_float64_weights_that_overflow_float32_are_refused(tmp_path):
    """NeuronLens encodes in float32, where a float64 1e300 is Inf."""
    w_enc = random_sae(D_IN, D_SAE, layer=0).W_enc.double()
    w_enc[0, 0] = 1e300
    with pytest.raises(SAEError, match="'W_enc' holds 1 NaN/Inf"):
        load_saelens(_saelens(tmp_path, tensors={"W_enc": w_enc}))


def test_non_finite_sparsify_weights_are_refused_in_the_files_terms(tmp_path):
    enc = torch.randn(D_SAE, D_IN)
    enc[2, 2] = math.nan
    folder = _sparsify(tmp_path, tensors={"encoder.weight": enc})
    with pytest.raises(SAEError, match=r"sae\.safetensors: tensor 'encoder.weight' holds 1 NaN/Inf"):
        load_sparsify(folder)


def test_an_sae_built_in_python_with_nan_weights_is_refused_as_sae_argument(tiny_base_dir):
    base = alignment.load_model(tiny_base_dir)
    sae = random_sae(64, 128, layer=1)
    with torch.no_grad():
        sae.W_dec[0, 0] = math.nan
    with pytest.raises(SAEError, match=r"sae\[1\]: tensor 'W_dec' holds 1 NaN/Inf"):
        as_sae_set({1: sae}, base)


@pytest.mark.parametrize(
    "metrics,expected",
    [
        ({"fvu": math.nan}, "has FVU nan, not a number"),
        ({"fvu": math.inf}, "explains too little variance (FVU inf > 0.5)"),
        ({"fvu": "0.1"}, "has FVU '0.1', not a number"),
        ({"fvu": None}, "has FVU None, not a number"),
        ({"fvu": 0.9}, "explains too little variance (FVU 0.90 > 0.5)"),
        ({"fvu": 0.1, "dead_fraction": math.nan}, "has dead fraction nan, not a number"),
        ({"dead_fraction": 0.8}, "has too many dead latents (dead fraction 80% > 50%)"),
    ],
)
def test_a_nan_or_poor_recorded_metric_is_a_quality_warning(tmp_path, metrics, expected):
    """`fvu > max_fvu` is False for NaN: an SAE whose saved FVU was NaN used to pass silently."""
    folder = _saelens(tmp_path, cfg={"neuronlens": {"metrics": metrics}})  # json writes NaN/Infinity
    warnings = SAESet({0: load_saelens(folder)}).quality_warnings()
    assert len(warnings) == 1 and warnings[0].startswith("SAE for layer 0 ") and expected in warnings[0], warnings


@pytest.mark.parametrize("metrics", [{}, {"fvu": 0.1, "dead_fraction": 0.0, "l0": 8.0}])
def test_good_or_unrecorded_metrics_give_no_warning(tmp_path, metrics):
    folder = _saelens(tmp_path, cfg={"neuronlens": {"metrics": metrics}})
    assert SAESet({0: load_saelens(folder)}).quality_warnings() == []


@pytest.mark.parametrize("block", [[1], {"metrics": [0.1]}, "x"])
def test_a_malformed_neuronlens_entry_is_a_clear_error(tmp_path, block):
    with pytest.raises(SAEError, match='"neuronlens" entry'):
        load_saelens(_saelens(tmp_path, cfg={"neuronlens": block}))


def test_an_fvu_measured_as_nan_in_the_audit_is_a_warning():
    """The audit's own reconstruction check: a NaN reconstruction (huge finite weights overflow
    to Inf - Inf) gives a NaN FVU, which `fvu > max_fvu` let through."""
    from neuronlens.pipeline import probe_fvu_warnings
    from neuronlens.stats import AuditSums

    sums = AuditSums.empty()
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    sums.reconstruction(1, "finance", 4).add(x, torch.full_like(x, math.nan))
    sums.reconstruction(2, "finance", 4).add(x, 0.999 * x)  # good: FVU ~1e-6
    sums.reconstruction(3, "finance", 4).add(x, torch.zeros_like(x))  # poor: FVU > 1
    warnings = probe_fvu_warnings(sums, [1, 2, 3], 0.5)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("SAE for layer 1 has FVU nan, not a number")
    assert warnings[1].startswith("SAE for layer 3 explains too little") and "measured in this audit" in warnings[1]


# -- 2. settings NeuronLens cannot encode with --------------------------------------------------


@pytest.mark.parametrize("k", [D_SAE + 1, 10_000, 0, -1, 2.5, "8", None, True])
def test_a_topk_k_outside_1_to_d_sae_is_refused(tmp_path, k):
    folder = _saelens(tmp_path, cfg={"k": k})
    with pytest.raises(SAEError, match=rf"k={k!r}, but k must be a whole number from 1 to its width d_sae={D_SAE}") as exc:
        load_saelens(folder)
    assert f"(1..{D_SAE})" in exc.value.fix


def test_k_as_an_integral_json_float_is_accepted(tmp_path):
    sae = load_saelens(_saelens(tmp_path, cfg={"k": 8.0}))
    assert sae.info.k == 8 and isinstance(sae.info.k, int)


def test_a_pre_v6_k_in_activation_fn_kwargs_is_checked_too(tmp_path):
    folder = _saelens(tmp_path, cfg={"k": None, "activation_fn_kwargs": {"k": 99}})
    with pytest.raises(SAEError, match="k=99"):
        load_saelens(folder)


@pytest.mark.parametrize("k", [D_SAE + 1, None])
def test_a_sparsify_k_outside_1_to_num_latents_is_refused(tmp_path, k):
    folder = _sparsify(tmp_path, cfg={"k": k})
    with pytest.raises(SAEError, match=rf"k={k!r}, but k must be a whole number from 1 to its width d_sae={D_SAE}"):
        load_sparsify(folder)


def test_jumprelu_without_threshold_is_refused(tmp_path):
    with pytest.raises(SAEError, match="JumpReLU SAE at .* has no threshold tensor"):
        load_saelens(_saelens(tmp_path, "jumprelu", drop=("threshold",)))


def test_jumprelu_with_a_negative_threshold_is_refused(tmp_path):
    with pytest.raises(SAEError, match="has 1 negative threshold value") as exc:
        load_saelens(_saelens(tmp_path, "jumprelu", tensors=_with("threshold", (4,), -0.1, "jumprelu")))
    assert "positive" in exc.value.fix


@pytest.mark.parametrize(
    "tensors,cfg,match",
    [
        ({"W_dec": torch.zeros(D_IN, D_SAE)}, None, r"W_dec has shape \(8, 16\), expected \(16, 8\)"),
        ({"b_enc": torch.zeros(D_SAE - 1)}, None, r"b_enc has shape \(15,\), expected \(16,\)"),
        ({"b_dec": torch.zeros(D_IN + 1)}, None, r"b_dec has shape \(9,\), expected \(8,\)"),
        ({"W_enc": torch.zeros(D_IN * D_SAE)}, None, r"tensor 'W_enc' has shape \(128,\), of the wrong rank"),
        ({"b_enc": torch.zeros(1, D_SAE)}, None, r"tensor 'b_enc' has shape \(1, 16\), of the wrong rank"),
        (None, {"d_in": 9}, r"cfg.json says d_in=9, but the weights have 8"),
        (None, {"d_sae": 32}, r"cfg.json says d_sae=32, but the weights have 16"),
    ],
)
def test_weights_that_do_not_fit_together_or_the_config_are_refused(tmp_path, tensors, cfg, match):
    with pytest.raises(SAEError, match=match):
        load_saelens(_saelens(tmp_path, tensors=tensors, cfg=cfg))


def test_a_jumprelu_threshold_of_the_wrong_width_is_refused(tmp_path):
    with pytest.raises(SAEError, match=r"threshold has shape \(15,\), expected \(16,\)"):
        load_saelens(_saelens(tmp_path, "jumprelu", tensors={"threshold": torch.ones(D_SAE - 1)}))


@pytest.mark.parametrize(
    "tensors,cfg,match",
    [
        ({"W_dec": torch.zeros(D_SAE + 1, D_IN)}, None, r"W_dec has shape \(17, 8\), expected \(16, 8\)"),
        (None, {"num_latents": 32}, "says num_latents=32, but the weights have 16"),
        (None, {"d_in": 12}, "says d_in=12, but the weights have 8"),
    ],
)
def test_sparsify_weights_that_do_not_fit_are_refused(tmp_path, tensors, cfg, match):
    with pytest.raises(SAEError, match=match):
        load_sparsify(_sparsify(tmp_path, tensors=tensors, cfg=cfg))


@pytest.mark.parametrize("arch", ["gated", "batchtopk_transcoder", ["topk"]])
def test_an_unknown_architecture_is_refused_before_its_weights(tmp_path, arch):
    folder = _saelens(tmp_path, "standard", cfg={"architecture": arch}, drop=("b_enc",))  # a gated SAE has no b_enc
    with pytest.raises(SAEError, match=r"has architecture .*, which NeuronLens cannot encode with") as exc:
        load_saelens(folder)
    assert "standard, topk, jumprelu" in exc.value.fix


def test_training_refuses_a_k_wider_than_the_sae_before_generating_the_corpus(tiny_base_dir, monkeypatch):
    from neuronlens.saes import SAETrainConfig, _corpus

    monkeypatch.setattr(_corpus, "corpus_sequences", lambda *a, **k: pytest.fail("corpus generated"))
    base = alignment.load_model(tiny_base_dir)
    with pytest.raises(SAEError, match=r"k=200: a TopK SAE of width 128 .* needs k from 1 to 128"):
        alignment.load_sae(base, layers=[1], train_config=SAETrainConfig(expansion_factor=2, k=200))


@pytest.mark.parametrize(
    "broken,match",
    [
        (dict(cfg={"k": D_SAE * 100}), "k=1600, but k must be a whole number from 1 to its width d_sae=128"),
        (dict(tensors=_with("W_dec", (0, 0), math.nan)), "tensor 'W_dec' holds 1 NaN/Inf"),
    ],
)
def test_the_cli_exits_2_on_a_broken_sae(monkeypatch, capsys, tmp_path, tiny_base_dir, broken, match):
    """A TopK k above the SAE's width ended the audit in a traceback (exit 1); NaN weights ran
    to a report whose SAE warnings were empty."""
    folder = save_saelens(random_sae(64, 128, layer=1), tmp_path / "saes" / "layer_1")
    if "cfg" in broken:
        (folder / "cfg.json").write_text(json.dumps({**json.loads((folder / "cfg.json").read_text()), **broken["cfg"]}))
    else:
        w = load_file(str(folder / WEIGHTS))
        w["W_dec"][0, 0] = math.nan
        save_file(w, str(folder / WEIGHTS))
    monkeypatch.setattr(sys, "argv", ["neuronlens", "audit", "--base", str(tiny_base_dir), "--ft", str(tiny_base_dir),
                                      "--sae", str(tmp_path / "saes"), "--layers", "1", "--out", str(tmp_path / "o"), "--no-progress"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 2, err
    assert match in err and "How to fix" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "report.json").exists()


# -- 3. the `sae=` argument ---------------------------------------------------------------------


def test_sae_argument_accepts_a_plain_dict_a_folder_and_one_sae(tmp_path, tiny_base_dir):
    base = alignment.load_model(tiny_base_dir)
    one, three = random_sae(64, 128, layer=1, seed=1), random_sae(64, 128, layer=3, seed=3)
    folder = save_saelens(three, tmp_path / "saes" / "layer_3")
    got = as_sae_set({1: one, 3: str(folder)}, base)
    assert isinstance(got, SAESet) and got.layers == [1, 3]
    assert got[1] is one and got[3].digest == three.digest
    assert as_sae_set(one, base).layers == [1]
    assert as_sae_set(tmp_path / "saes", base, [3])[3].digest == three.digest
    assert as_sae_set(SAESet({1: one}), base)[1] is one


def _wrong_arguments() -> list:
    one = random_sae(64, 128, layer=1)
    wide = random_sae(64, 128, layer=1, k=500)
    return [
        (5, "sae= got a int; it takes an SAESet from load_sae"),
        (["a", "b"], "sae= got a list; it takes"),
        ({}, "sae= got an empty mapping"),
        ({"1": one}, "sae= has key '1', which is not a layer of"),
        ({True: one}, "sae= has key True, which is not a layer of"),
        ({9: one}, "sae= has key 9, which is not a layer of"),
        ({1: 5}, r"sae\[1\] is a int, not an SAE"),
        ({1: ["x"]}, r"sae\[1\] is a list, not an SAE"),
        ({2: one}, r"sae\[2\] is the SAE for layer 1 \(hook blocks.1.hook_resid_post\)"),
        ({1: wide}, r"TopK SAE at sae\[1\] has k=500, but k must be a whole number from 1 to its width d_sae=128"),
    ]


@pytest.mark.parametrize("sae,match", _wrong_arguments())
def test_sae_argument_of_a_wrong_type_is_a_clear_error(tiny_base_dir, sae, match):
    base = alignment.load_model(tiny_base_dir)
    with pytest.raises(SAEError, match=match) as exc:
        as_sae_set(sae, base)
    assert any(fix in exc.value.fix for fix in ("load_sae(base", "sae={sae.layer: sae}", "SAEInfo.k"))


def test_compare_models_refuses_a_wrong_sae_before_generating(tiny_base_dir, monkeypatch):
    monkeypatch.setattr("neuronlens.pipeline._reference.response_sequences", lambda *a, **k: pytest.fail("responses generated"))
    base = alignment.load_model(tiny_base_dir)
    with pytest.raises(SAEError, match="sae= got a list"):
        alignment.compare_models(base, alignment.load_model(tiny_base_dir), ["saes/layer_1"], probes=["finance"], metrics=["drift"])


def test_compare_models_audits_with_a_plain_dict_of_saes(tiny_base_dir):
    """It raised AttributeError ('dict' object has no attribute 'layers')."""
    base = alignment.load_model(tiny_base_dir)
    saes = {1: random_sae(64, 128, 1, seed=1), 3: random_sae(64, 128, 3, seed=3)}
    cfg = alignment.AuditConfig(max_prompts_per_set=4, max_new_tokens=6)
    rep = alignment.compare_models(base, alignment.load_model(tiny_base_dir), saes, probes=["finance"], metrics=["drift"], config=cfg)
    assert [ld.layer for ld in rep.layers] == [1, 3]
    assert [s["sha256"] for s in rep.saes] == [saes[1].digest, saes[3].digest]


def test_discover_still_reads_a_good_folder(tmp_path):
    """The checks above refuse broken SAEs only: a good one loads unchanged."""
    sae = random_sae(D_IN, D_SAE, layer=0, arch="jumprelu")
    save_saelens(sae, tmp_path / "ok")
    (back,) = discover(tmp_path / "ok")
    assert back.digest == sae.digest
