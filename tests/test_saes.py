"""SAE formats: SAELens round trip, sparsify layout, hook-name mapping, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import random_sae
from neuronlens.errors import ConfigError, SAEError
from neuronlens.saes import load_saelens, load_sparsify, save_saelens
from neuronlens.saes._formats import discover, layer_from_hook


@pytest.mark.parametrize("arch", ["topk", "standard", "jumprelu"])
def test_saelens_round_trip(tmp_path, arch):
    sae = random_sae(16, 40, layer=3, arch=arch)
    folder = save_saelens(sae, tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post" and cfg["architecture"] == arch
    back = load_saelens(folder)
    x = torch.randn(50, 16)
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=0, atol=0)
    assert back.digest == sae.digest and back.layer == 3


def test_saelens_encode_matches_reference_formula(tmp_path):
    sae = random_sae(16, 40, layer=1, arch="topk", k=5)
    x = torch.randn(30, 16)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    top = pre.topk(5, dim=-1)
    ref = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    torch.testing.assert_close(sae.encode(x), ref)
    assert int((sae.encode(x) > 0).sum(-1).max()) <= 5


def test_pre_v6_flat_config(tmp_path):
    sae = random_sae(8, 16, layer=0, arch="standard")
    folder = tmp_path / "old"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in sae.tensors().items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "hook_point": "blocks.1.hook_resid_pre",
                                                 "activation_fn_str": "relu", "model_name": "x"}))
    back = load_saelens(folder)
    assert back.layer == 0  # resid_pre of block 1 is the output of block 0
    x = torch.randn(4, 8)
    torch.testing.assert_close(back.encode(x), sae.encode(x))


def test_sparsify_layout(tmp_path):
    d_in, d_sae, k = 12, 30, 4
    g = torch.Generator().manual_seed(1)
    enc_w, enc_b = torch.randn(d_sae, d_in, generator=g), torch.randn(d_sae, generator=g)
    w_dec, b_dec = torch.randn(d_sae, d_in, generator=g), torch.randn(d_in, generator=g)
    folder = tmp_path / "sparsify" / "layers.7"
    folder.mkdir(parents=True)
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": w_dec, "b_dec": b_dec}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 32, "normalize_decoder": True, "num_latents": d_sae,
                                                 "k": k, "multi_topk": False, "skip_connection": False, "d_in": d_in}))
    (sae,) = discover(tmp_path / "sparsify")
    assert sae.layer == 7 and sae.info.format == "sparsify"
    x = torch.randn(20, d_in)
    # sparsify: relu(encoder(x - b_dec)) then top-k
    pre = torch.relu((x - b_dec) @ enc_w.T + enc_b)
    top = pre.topk(k, dim=-1)
    ref = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    torch.testing.assert_close(sae.encode(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(ref), ref @ w_dec + b_dec, rtol=1e-5, atol=1e-5)
    assert load_sparsify(folder).digest == sae.digest


def test_non_residual_hooks_are_refused():
    with pytest.raises(SAEError, match="residual stream"):
        layer_from_hook("blocks.4.hook_mlp_out", "x")
    assert layer_from_hook("layers.12", "x") == 12


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(SAEError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAEError, match="No SAE found"):
        discover(tmp_path / "empty")


def test_corrupt_weights_file(tmp_path):
    folder = save_saelens(random_sae(8, 16, layer=0), tmp_path / "s")
    (folder / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SAEError, match="safetensors"):
        load_saelens(folder)


def test_load_sae_checks_d_in_and_layers(tmp_path, tiny_base_dir):
    from neuronlens import alignment

    base = alignment.load_model(tiny_base_dir)
    save_saelens(random_sae(32, 64, layer=1), tmp_path / "wrong" / "l1")
    with pytest.raises(SAEError, match="d_model 64"):
        alignment.load_sae(base, layers=[1], source=tmp_path / "wrong")
    save_saelens(random_sae(64, 128, layer=1), tmp_path / "ok" / "l1")
    with pytest.raises(SAEError, match=r"no SAE for layer\(s\) \[2\]"):
        alignment.load_sae(base, layers=[1, 2], source=tmp_path / "ok")
    with pytest.raises(ConfigError, match="out of range"):  # a setting out of range, as AuditConfig calls it
        alignment.load_sae(base, layers=[9], source=tmp_path / "ok")
    assert alignment.load_sae(base, layers=[1], source=tmp_path / "ok").layers == [1]


def test_trained_sae_records_quality(tiny_base_dir):
    from neuronlens import alignment
    from neuronlens.saes import SAETrainConfig

    base = alignment.load_model(tiny_base_dir)
    saes = alignment.load_sae(base, layers=[2], train_config=SAETrainConfig(epochs=1, expansion_factor=2, k=8))
    m = saes[2].info.metrics
    assert set(m) >= {"fvu", "l0", "dead_fraction"}
    assert m["l0"] <= 8 and 0 <= m["fvu"] < 1
    # cached: a second call loads the same SAE instead of training again
    again = alignment.load_sae(base, layers=[2], train_config=SAETrainConfig(epochs=1, expansion_factor=2, k=8))
    assert again[2].digest == saes[2].digest and again[2].info.source.endswith("layer_2")
    # and an entry that is no longer what was trained is not trusted (one training serves both checks)
    _refuses_every_tampered_copy(Path(again[2].info.source), base.digest, SAETrainConfig(epochs=1, expansion_factor=2, k=8))


TAMPERS = {
    "metrics edited": lambda f: f.joinpath("cfg.json").write_text(
        json.dumps({**json.loads(f.joinpath("cfg.json").read_text()), "neuronlens": {"metrics": {"fvu": 0.01}}})),
    "weights zeroed": lambda f: save_file({k: v * 0 for k, v in load_file(str(f / "sae_weights.safetensors")).items()},
                                          str(f / "sae_weights.safetensors")),
    "cfg not utf-8": lambda f: f.joinpath("cfg.json").write_bytes(b"\xff\xfe{"),
    "cfg a list": lambda f: f.joinpath("cfg.json").write_text("[1]"),
    "seal missing": lambda f: f.joinpath("neuronlens_cache.json").unlink(),
    "older format": lambda f: f.joinpath("neuronlens_cache.json").write_text(
        json.dumps({**json.loads(f.joinpath("neuronlens_cache.json").read_text()), "format": 0})),
}
"""Ways a trained SAE's cache entry can stop being the one that was trained (`_cached_sae` must
refuse each): its saved quality metrics edited (they decide whether a verdict is trusted), its
weights rewritten as a valid file, a config that is not UTF-8 or not an object, an entry from
before the seal, or one of another cache format."""


def _refuses_every_tampered_copy(trained: Path, digest: str, cfg) -> None:
    import shutil

    from neuronlens.saes import _cached_sae

    pristine = trained.parent / "pristine"
    shutil.copytree(trained, pristine)
    for name, tamper in TAMPERS.items():
        shutil.rmtree(trained, ignore_errors=True)
        shutil.copytree(pristine, trained)
        tamper(trained)
        with pytest.warns(UserWarning, match="corrupt or stale; rebuilding"):
            assert _cached_sae(digest, cfg, 2) is None, name
        assert not trained.exists(), name  # removed, so the next load_sae retrains it
    shutil.copytree(pristine, trained)
    assert _cached_sae(digest, cfg, 2) is not None  # the untouched copy is trusted


@pytest.mark.parametrize("content", [b"\xff\xfe{", b"[1]"])
def test_a_cfg_that_is_not_a_json_object_is_a_clear_error(tmp_path, content):
    folder = save_saelens(random_sae(8, 16, layer=0), tmp_path / "s")
    (folder / "cfg.json").write_bytes(content)
    with pytest.raises(SAEError, match="cfg.json"):
        load_saelens(folder)


@pytest.mark.parametrize(
    "layers,match",
    [
        ([1, 1], r"layers=\[1, 1\] repeats a layer"),
        (["1"], r"holds '1' \(type str\), not integer layer numbers"),
        (1, r"layers=1 \(type int\) is not a list of layer numbers"),
        ("12", r"layers='12' \(type str\) is not a list"),
        ([1.0], r"holds 1.0 \(type float\)"),
        ([True], r"holds True \(type bool\)"),
        ([], "empty list"),
    ],
)
def test_load_sae_checks_the_layers_argument_like_the_cli(tiny_base_dir, layers, match):
    """The API said "no SAE is shipped or cached for layer(s) [1, 1]" for a repeated layer, raised
    a bare TypeError for "1" or 1, and took 1.0 and True as layer numbers."""
    from neuronlens import alignment
    from neuronlens.errors import ConfigError

    base = alignment.load_model(tiny_base_dir)
    with pytest.raises(ConfigError, match=match) as exc:
        alignment.load_sae(base, layers=layers, train=False)
    assert exc.value.fix


@pytest.mark.parametrize("model", [None, "smollm2-135m-instruct"])
def test_load_sae_needs_a_model_handle(model):
    from neuronlens import alignment
    from neuronlens.errors import ConfigError

    with pytest.raises(ConfigError, match="load_sae needs the model as a ModelHandle") as exc:
        alignment.load_sae(model, layers=[1], train=False)
    assert "load_model" in exc.value.fix
