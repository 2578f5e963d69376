"""SAE families and release names, against sae-lens's own encodes (tests/fixtures/saes).

The fixtures were written once by scripts/make_sae_fixtures.py with sae-lens 6.54.12 (see
manifest.json); sae-lens is not needed here. Each family's reader must match sae-lens's encode
within 1e-5 of the largest activation, and its decode within 1e-5 of the largest reconstruction.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from neuronlens.errors import SAEError
from neuronlens.saes import load_saelens
from neuronlens.saes._families import FAMILIES, Found, Registered, family_of, find_saes, load_folder
from neuronlens.saes._releases import get_release, load_release, parse_spec

FIXTURES = Path(__file__).parent / "fixtures" / "saes"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]
BY_NAME = {fx["name"]: fx for fx in MANIFEST}
GEMMA = FIXTURES / BY_NAME["gemma_scope"]["folder"]
LLAMA = FIXTURES / BY_NAME["llama_scope"]["folder"]


def expected(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "expected" / f"{name}.safetensors"))


def assert_matches(sae, name: str) -> None:
    e = expected(name)
    acts = sae.encode(e["x"])
    assert float((acts - e["acts"]).abs().max()) <= 1e-5 * float(e["acts"].abs().max())
    recon = sae.decode(e["acts"])
    assert float((recon - e["recon"]).abs().max()) <= 1e-5 * float(e["recon"].abs().max())


def read(folder: Path, reg: Registered = Registered()):
    family = family_of(folder)
    assert family is not None, folder
    return Found(folder, family, family.hook(folder, reg), reg).read()


def test_fixtures_are_the_committed_ones():
    for line in (FIXTURES / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_each_family_encodes_and_decodes_as_sae_lens(name):
    fx = BY_NAME[name]
    folder = FIXTURES / fx["folder"]
    reg = Registered(norm_scaling_factor=fx["norm_scaling_factor"]) if name == "saelens_norm_release" else Registered()
    sae = read(folder, reg)
    assert sae.info.hook_name == fx["hook"] and sae.info.format == fx["family"] and sae.info.d_in == 64
    assert_matches(sae, name)


def test_resid_pre_feeds_the_output_of_the_block_before():
    sae = read(FIXTURES / BY_NAME["saelens_legacy_resid_pre"]["folder"])
    assert sae.info.hook_name == "blocks.3.hook_resid_pre" and sae.layer == 2  # hidden_states[3] = output of block 2


def test_topk_rescale_returns_sae_lens_units_not_divided_ones():
    sae = read(FIXTURES / BY_NAME["saelens_topk_rescale"]["folder"])
    x, acts = expected("saelens_topk_rescale")["x"], sae.encode(expected("saelens_topk_rescale")["x"])
    divided = acts / sae.W_dec.norm(dim=-1)  # what NeuronLens returned before: off by the decoder norms
    assert float((divided - expected("saelens_topk_rescale")["acts"]).abs().max()) > 0.1
    assert float((sae.decode(acts) - expected("saelens_topk_rescale")["recon"]).abs().max()) < 1e-4
    assert x.shape == (24, 64)


def test_old_config_with_normalize_activations_false_loads():
    cfg = json.loads((FIXTURES / BY_NAME["saelens_legacy_resid_pre"]["folder"] / "cfg.json").read_text())
    assert cfg["normalize_activations"] is False
    assert load_saelens(FIXTURES / BY_NAME["saelens_legacy_resid_pre"]["folder"]).layer == 2


def _saelens_copy(tmp_path: Path, name: str, **changes) -> Path:
    folder = tmp_path / name
    shutil.copytree(FIXTURES / BY_NAME[name]["folder"], folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("mode", ["layer_norm", "constant_norm_rescale"])
def test_per_vector_normalisation_is_refused_without_the_fold_hint(tmp_path, mode):
    folder = _saelens_copy(tmp_path, "saelens_standard", normalize_activations=mode)
    with pytest.raises(SAEError, match="cannot be folded") as err:
        load_saelens(folder)
    assert "fold_activation_norm_scaling_factor" not in str(err.value)


def test_dataset_norm_without_a_factor_is_refused_and_folded_with_one():
    folder = FIXTURES / BY_NAME["saelens_norm_release"]["folder"]
    with pytest.raises(SAEError, match="fold_activation_norm_scaling_factor"):
        load_saelens(folder)
    assert_matches(load_saelens(folder, norm_scaling_factor=2.5), "saelens_norm_release")


def test_transformer_lens_processing_is_refused_by_name(tmp_path):
    folder = _saelens_copy(tmp_path, "saelens_standard")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"]["model_from_pretrained_kwargs"] = {"center_writing_weights": True}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="center_writing_weights"):
        load_saelens(folder)


def test_several_saes_for_one_layer_are_listed_then_chosen_by_folder(tmp_path):
    for name in ("saelens_standard", "saelens_topk", "saelens_legacy_resid_pre"):  # all three feed layer 2
        _saelens_copy(tmp_path / "mixed", name)
    with pytest.raises(SAEError, match="3 SAEs for layer 2") as err:
        load_folder(tmp_path / "mixed", [2], str(tmp_path / "mixed"))
    for part in ("saelens_topk", "blocks.3.hook_resid_pre", "blocks.2.hook_resid_post", "RELEASE:SAE_ID"):
        assert part in str(err.value)
    assert load_folder(tmp_path / "mixed" / "saelens_topk", [2], "x")[2].info.architecture == "topk"


def test_nested_release_layouts_are_found_and_only_chosen_saes_read(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "all")
    (tmp_path / "all" / "saelens" / "standard" / "sae_weights.safetensors").write_bytes(b"broken")  # layer 2, not chosen
    found = find_saes(tmp_path / "all")
    assert len(found) == len(MANIFEST)
    with pytest.raises(SAEError, match="SAEs for layer 2"):
        load_folder(tmp_path / "all", [2], "all")
    assert_matches(load_folder(tmp_path / "all" / "llama_scope", [1], "x")[1], "llama_scope")
    assert_matches(load_folder(tmp_path / "all" / "gemma_scope", [2], "x")[2], "gemma_scope")


def _gemma_leaf(tmp_path: Path, repo: str) -> Path:
    leaf = tmp_path / repo / "layer_2" / "width_16k" / "average_l0_141"
    shutil.copytree(GEMMA, leaf)
    return leaf


def test_gemma_scope_site_comes_from_the_repo_name(tmp_path):
    with pytest.raises(SAEError, match=r"Gemma Scope SAE that reads 'blocks\.2\.hook_mlp_out'"):
        load_folder(_gemma_leaf(tmp_path, "gemma-scope-2b-pt-mlp"), [2], "x")
    with pytest.warns(UserWarning, match="assuming the residual stream"):
        sae = load_folder(_gemma_leaf(tmp_path, "downloads"), [2], "x")[2]
    assert_matches(sae, "gemma_scope")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_folder(_gemma_leaf(tmp_path, "models--google--gemma-scope-2b-pt-res/snapshots/abc"), [2], "x")


def test_a_pickled_npz_is_refused_unopened(tmp_path):
    leaf = _gemma_leaf(tmp_path, "gemma-scope-2b-pt-res")
    arrays = dict(np.load(leaf / "params.npz"))
    arrays["W_enc"] = np.array([{"not": "an array"}], dtype=object)
    np.savez(leaf / "params.npz", **arrays)
    with pytest.raises(SAEError, match="plain arrays"):
        load_folder(leaf, [2], "x")


@pytest.mark.parametrize(("changes", "match"), [
    ({"hf_hook_point_in": "model.layers.3.self_attn.o_proj.input", "hf_hook_point_out": "model.layers.3.self_attn.o_proj.input"},
     r"attn\.hook_z"),
    ({"hf_hook_point_in": "model.layers.3.pre_feedforward_layernorm.output",
      "hf_hook_point_out": "model.layers.3.post_feedforward_layernorm.output", "type": "transcoder"}, "transcoder"),
])
def test_gemma_scope_2_non_residual_sites_are_refused(tmp_path, changes, match):
    folder = tmp_path / "g2"
    shutil.copytree(FIXTURES / BY_NAME["gemma_scope_2"]["folder"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match=match):
        load_folder(folder, [3], "x")


@pytest.mark.parametrize(("hook_in", "hook_out", "match"), [
    ("blocks.1.hook_attn_out", "blocks.1.hook_attn_out", r"Llama Scope SAE that reads 'blocks\.1\.hook_attn_out'"),
    ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", "transcoder"),
])
def test_llama_scope_non_residual_saes_are_refused(tmp_path, hook_in, hook_out, match):
    folder = tmp_path / "ls"
    shutil.copytree(LLAMA, folder)
    hp = json.loads((folder / "hyperparams.json").read_text())
    hp.update(hook_point_in=hook_in, hook_point_out=hook_out)
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    with pytest.raises(SAEError, match=match):
        load_folder(folder, [1], "x")


def test_every_family_is_in_the_registry():
    assert [f.name for f in FAMILIES] == ["saelens", "sparsify", "gemma_scope", "gemma_scope_2", "llama_scope"]
    assert {fx["family"] for fx in MANIFEST} == {f.name for f in FAMILIES}


# ---- release names ------------------------------------------------------------------------------

REV = "0123456789abcdef0123456789abcdef01234567"


def fake_hub(root: Path) -> Path:
    """A Hugging Face hub cache holding the Gemma Scope and Llama Scope fixtures at their release paths."""
    for fx in (BY_NAME["gemma_scope"], BY_NAME["llama_scope"]):
        repo = root / f"models--{fx['repo_id'].replace('/', '--')}"
        shutil.copytree(FIXTURES / fx["folder"], repo / "snapshots" / REV / fx["path"])
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(REV)
    decoy = root / "models--google--gemma-scope-2b-pt-res" / "snapshots" / REV / "layer_2" / "width_65k" / "average_l0_197"
    shutil.copytree(GEMMA, decoy)  # another layer-2 SAE of the same repo: never fetched unless chosen
    return root


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants as constants

    cache = fake_hub(tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fetched: list[str] = []
    real = huggingface_hub.hf_hub_download

    def recording(*args, **kwargs):
        fetched.append(f"{kwargs['repo_id']}/{kwargs['filename']}")
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording)
    return fetched


def test_release_specs_parse():
    assert parse_spec("gemma-scope-2b-pt-res-canonical") == ("gemma-scope-2b-pt-res-canonical", None)
    assert parse_spec("llama_scope_lxr_8x:l1r_8x,l2r_8x") == ("llama_scope_lxr_8x", ["l1r_8x", "l2r_8x"])
    assert parse_spec("google/gemma-scope-2b-pt-res") is None and parse_spec("./my-saes") is None
    assert get_release("llama_scope_lxr_8x").saes["l1r_8x"].hook == "blocks.1.hook_resid_post"


def test_release_loads_offline_and_fetches_only_its_own_files(offline_hub):
    sae = load_release("gemma-scope-2b-pt-res-canonical", ["layer_2/width_16k/canonical"], None)[2]
    assert offline_hub == ["google/gemma-scope-2b-pt-res/layer_2/width_16k/average_l0_141/params.npz"]
    assert sae.info.source == "gemma-scope-2b-pt-res-canonical:layer_2/width_16k/canonical"
    assert_matches(sae, "gemma_scope")
    llama = load_release("llama_scope_lxr_8x", None, [1])[1]  # one SAE for layer 1: chosen by layer
    assert offline_hub[1:] == [f"fnlp/Llama3_1-8B-Base-LXR-8x/Llama3_1-8B-Base-L1R-8x/{f}"
                               for f in ("hyperparams.json", "checkpoints/final.safetensors")]
    assert_matches(llama, "llama_scope")  # the registry's norm_scaling_factor folded, as sae-lens does


def test_release_with_several_saes_for_a_layer_lists_them(offline_hub):
    with pytest.raises(SAEError, match="2 SAEs for layer 2: layer_2/width_16k/canonical, layer_2/width_65k/canonical"):
        load_release("gemma-scope-2b-pt-res-canonical", None, [2])
    assert offline_hub == []


@pytest.mark.parametrize(("spec", "match"), [
    ("gpt2-small-hook-z-kk", "hook_z"),
    ("gemma-scope-2b-pt-transcoders", "transcoders"),
    ("gpt2-small-res-jb:blocks.8.hook_resid_pre", "center_writing_weights"),
    ("mistral-7b-res-wg:blocks.8.hook_resid_pre", "constant_norm_rescale"),
    ("gemma-scope-2b-pt-mlp-canonical:layer_2/width_16k/canonical", "hook_mlp_out"),
    ("gemma-scope-2b-pt-res:embedding/width_4k/average_l0_6", "hook_embed"),
    ("llama_scope_lxr_8x:l1r_16x", "Did you mean l1r_8x"),
])
def test_releases_that_cannot_be_fed_are_refused_by_name_before_any_download(offline_hub, spec, match):
    name, ids = parse_spec(spec)
    with pytest.raises(SAEError, match=match):
        load_release(name, ids, [2])
    assert offline_hub == []


def test_a_release_missing_from_an_offline_cache_says_how_to_fill_it(offline_hub):
    with pytest.raises(SAEError, match="HF_HUB_OFFLINE"):
        load_release("llama_scope_lxr_8x", ["l2r_8x"], None)


def test_load_sae_by_release_name_offline_in_a_fresh_process(tmp_path, tiny_base_dir):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE set as a user would, before huggingface_hub is imported."""
    cache = fake_hub(tmp_path / "hub")
    code = (
        "import json, sys; from neuronlens import alignment\n"
        f"base = alignment.load_model({str(tiny_base_dir)!r})\n"
        "a = alignment.load_sae(base, source='gemma-scope-2b-pt-res-canonical:layer_2/width_16k/canonical')\n"
        "c = alignment.load_sae(base, layers=[1], release='llama_scope_lxr_8x')\n"
        "print(json.dumps({'a': [a.layers, a[2].digest], 'c': [c.layers, c[1].info.format]}))\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PATH": "/usr/bin:/bin", "NEURONLENS_CACHE": str(tmp_path / "nl")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["a"][0] == [2] and got["a"][1] == read(GEMMA).digest
    assert got["c"] == [[1], "llama_scope"]


# ---- hub repo ids -------------------------------------------------------------------------------


def test_a_registered_repo_loads_as_its_release_and_a_shared_one_names_them(offline_hub):
    from neuronlens.saes._hub import load_hub_repo

    assert_matches(load_hub_repo("fnlp/Llama3_1-8B-Base-LXR-8x", [1])[1], "llama_scope")
    with pytest.raises(SAEError, match="gemma-scope-2b-pt-res, gemma-scope-2b-pt-res-canonical"):
        load_hub_repo("google/gemma-scope-2b-pt-res", [2])


def test_an_unregistered_repo_fetches_configs_then_only_the_chosen_weights(tmp_path, monkeypatch):
    from neuronlens.saes import _hub

    remote = tmp_path / "remote"
    for name in ("saelens_standard", "saelens_topk", "sparsify"):
        shutil.copytree(FIXTURES / BY_NAME[name]["folder"], remote / name / Path(BY_NAME[name]["folder"]).name)
    listing = [p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()]
    local, asked = tmp_path / "local", []

    def download(repo_id, patterns):
        asked.append(sorted(patterns))
        for p in patterns:
            (local / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(remote / p, local / p)
        return local

    monkeypatch.setattr("huggingface_hub.HfApi.list_repo_files", lambda self, repo_id: listing)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_hub, "_download", download)
    with pytest.raises(SAEError, match="2 SAEs for layer 2"):
        _hub.load_hub_repo("someone/saes", [2])
    assert all(p.endswith("cfg.json") for p in asked[0])  # no weights fetched to choose
    asked.clear()
    assert _hub.load_hub_repo("someone/saes", [3])[3].info.format == "sparsify"
    assert asked[1] == ["sparsify/layers.3/cfg.json", "sparsify/layers.3/sae.safetensors"]


# ---- Neuronpedia labels -------------------------------------------------------------------------

EXPLANATIONS = [{"modelId": "gpt2-small", "layer": "8-res-jb", "index": "5", "description": "cats"},
                {"modelId": "gpt2-small", "layer": 7, "index": 6, "description": "dogs"}]


def _label_files(tmp_path: Path) -> dict[str, Path]:
    import gzip

    lines = "".join(json.dumps(e) + "\n" for e in EXPLANATIONS)
    files = {".json": tmp_path / "np.json", ".jsonl": tmp_path / "np.jsonl", ".jsonl.gz": tmp_path / "np.jsonl.gz"}
    files[".json"].write_text(json.dumps(EXPLANATIONS))
    files[".jsonl"].write_text(lines)
    files[".jsonl.gz"].write_bytes(gzip.compress(lines.encode()))
    return files


@pytest.mark.parametrize("kind", [".json", ".jsonl", ".jsonl.gz"])
def test_neuronpedia_labels_map_by_hook_not_by_the_number(tmp_path, kind):
    from neuronlens.risk._labels import load_label_file

    path = _label_files(tmp_path)[kind]
    resid_pre = {7: "blocks.8.hook_resid_pre"}  # gpt2-small-res-jb: "8-res-jb" is the input of block 8 = layer 7
    got = load_label_file(path, {7: 24576}, n_layers=12, hooks=resid_pre)
    assert got == {(7, 5): ("cats", f"imported:{path.name}"), (7, 6): ("dogs", f"imported:{path.name}")}
    resid_post = {8: "blocks.8.hook_resid_post", 7: "blocks.7.hook_resid_post"}
    assert set(load_label_file(path, {7: 100, 8: 100}, n_layers=12, hooks=resid_post)) == {(8, 5), (7, 6)}


def test_a_block_read_by_two_audited_saes_is_ambiguous(tmp_path):
    from neuronlens.errors import ConfigError
    from neuronlens.risk._labels import load_label_file

    hooks = {7: "blocks.8.hook_resid_pre", 8: "blocks.8.hook_resid_post"}
    with pytest.raises(ConfigError, match="ambiguous"):
        load_label_file(_label_files(tmp_path)[".jsonl"], {7: 100, 8: 100}, n_layers=12, hooks=hooks)


def test_a_broken_gzip_export_is_a_clear_error(tmp_path):
    from neuronlens.errors import ConfigError
    from neuronlens.risk._labels import read_label_file

    (tmp_path / "x.jsonl.gz").write_bytes(b"\x1f\x8b not really")
    with pytest.raises(ConfigError, match="gzip"):
        read_label_file(tmp_path / "x.jsonl.gz")


def test_cli_audit_by_release_name_offline(tmp_path, tiny_base_dir):
    """`neuronlens audit --sae RELEASE:SAE_ID` from a filled hub cache, no --layers: the SAE's own layer."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(fake_hub(tmp_path / "hub")), NEURONLENS_CACHE=str(tmp_path / "nl"),
               OMP_NUM_THREADS="1")
    args = ["-m", "neuronlens", "audit", "--base", str(tiny_base_dir), "--ft", str(tiny_base_dir),
            "--sae", "llama_scope_lxr_8x:l1r_8x", "--probes", "finance", "--max-prompts", "4", "--max-new-tokens", "6",
            "--out", str(tmp_path / "out"), "--no-progress"]
    run = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode in (0, 1), run.stderr[-2000:]
    saes = json.loads((tmp_path / "out" / "report.json").read_text())["saes"]
    assert [(s["layer"], s["source"], s["format"]) for s in saes] == [(1, "llama_scope_lxr_8x:l1r_8x", "llama_scope")]


def test_symlinked_sae_folders_are_found_once_even_in_a_loop(tmp_path):
    (tmp_path / "saes").mkdir()
    (tmp_path / "saes" / "topk").symlink_to(FIXTURES / BY_NAME["saelens_topk"]["folder"], target_is_directory=True)
    (tmp_path / "saes" / "loop").symlink_to(tmp_path / "saes", target_is_directory=True)
    (found,) = find_saes(tmp_path / "saes")
    assert_matches(found.read(), "saelens_topk")
