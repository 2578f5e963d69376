"""Write tiny SAE fixtures, one per family and setting, with sae-lens's own encodes of a fixed input.

Run once with sae-lens installed in its own virtual environment (it is not a NeuronLens
dependency; ../shared/FACTS.md: ~1 GB, pins transformer-lens<4):

    python3 -m venv /work/saelens-venv
    /work/saelens-venv/bin/pip install torch==2.13.0 && /work/saelens-venv/bin/pip install sae-lens==6.54.12
    /work/saelens-venv/bin/python scripts/make_sae_fixtures.py

It writes tests/fixtures/saes/: each SAE in its family's published layout (under the folder its
release uses, so a test can also place it in a hub cache), expected/<name>.safetensors with the
input x, sae-lens's encode(x) and decode(encode(x)), manifest.json and SHA256SUMS. Converted
families are loaded through sae-lens's own release path (SAE.from_pretrained_with_cfg_and_sparsity)
with hf_hub_download pointed at the local files and a registry entry for the fixture, so its
converter and its registry-level folding are the ones exercised. tests/test_sae_families.py
compares NeuronLens with these values without sae-lens installed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sae_lens
from huggingface_hub.errors import EntryNotFoundError
from sae_lens import SAE
from sae_lens.loading import pretrained_sae_loaders as loaders
from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

ROOT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "saes"
D_IN, D_SAE, K, N = 64, 96, 8, 24
HUB: dict[str, Path] = {}  # repo id -> local folder standing in for it


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fixed_input() -> torch.Tensor:
    """24 vectors of d_in 64: N(0, 3^2) plus a shared offset, as residuals have."""
    return 3.0 * torch.randn(N, D_IN, generator=gen(12345)) + 0.5 * torch.randn(D_IN, generator=gen(54321))


def weights(seed: int, enc_scale: float = 1.0, dec_norms: bool = False) -> dict[str, torch.Tensor]:
    """Random SAELens-named weights whose pre-activations on `fixed_input` are O(1) and mixed in sign."""
    g = gen(seed)
    w_dec = torch.nn.functional.normalize(torch.randn(D_SAE, D_IN, generator=g), dim=-1)
    if dec_norms:  # decoder rows of norm 0.3..3: the rescale setting then changes which latents win
        w_dec = w_dec * (0.3 + 2.7 * torch.rand(D_SAE, 1, generator=g))
    w_enc = enc_scale * torch.randn(D_IN, D_SAE, generator=g) / (3.0 * D_IN**0.5)
    return {"W_enc": w_enc, "W_dec": w_dec, "b_enc": 0.2 * torch.randn(D_SAE, generator=g),
            "b_dec": 0.3 * torch.randn(D_IN, generator=g), "threshold": 0.3 + 0.5 * torch.rand(D_SAE, generator=g)}


# ---- sae-lens's release path, run on local files ------------------------------------------------


def fake_hf_hub_download(repo_id: str, filename: str, subfolder: str | None = None, **_: Any) -> str:
    path = HUB[repo_id] / (f"{subfolder}/{filename}" if subfolder else filename)
    if not path.is_file():
        raise EntryNotFoundError(f"{repo_id}: {path} (fixture) does not exist")
    return str(path)


def local_tensor_shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
    with safe_open(str(HUB[repo_id] / filename), framework="pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def register(release: str, repo_id: str, converter: str | None, sae_id: str, path: str, **extra: Any) -> None:
    get_pretrained_saes_directory()[release] = PretrainedSAELookup(
        release=release, repo_id=repo_id, model="fixture", conversion_func=converter, saes_map={sae_id: path},
        expected_var_explained={}, expected_l0={}, neuronpedia_id={},
        norm_scaling_factor={sae_id: extra["norm_scaling_factor"]} if "norm_scaling_factor" in extra else {},
        config_overrides=extra.get("overrides"))


def real_entry(release: str, sae_id: str) -> tuple[str, str, float | None]:
    """(repo id, path, norm_scaling_factor) of a real registry entry, so fixtures sit where releases put them."""
    lookup = get_pretrained_saes_directory()[release]
    return lookup.repo_id, lookup.saes_map[sae_id], lookup.norm_scaling_factor.get(sae_id)


def from_release(release: str, sae_id: str) -> SAE:
    return SAE.from_pretrained_with_cfg_and_sparsity(release, sae_id, device="cpu", dtype="float32")[0]


# ---- one fixture per family and setting ---------------------------------------------------------


def saelens_folder(name: str, arch: str, seed: int, *, hook: str = "blocks.2.hook_resid_post", dtype: str = "float32",
                   **cfg: Any) -> tuple[Path, Callable[[], SAE]]:
    """An SAELens folder written by sae-lens's own save_model; loaded back with load_from_disk."""
    from sae_lens.registry import get_sae_class
    from sae_lens.saes.sae import SAEMetadata

    cls, cfg_cls = get_sae_class(arch)
    sae = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, dtype="float32", metadata=SAEMetadata(hook_name=hook, model_name="fixture"), **cfg))
    w = weights(seed, dec_norms=bool(cfg.get("rescale_acts_by_decoder_norm")))
    sae.load_state_dict({k: v for k, v in w.items() if k in sae.state_dict()})
    folder = ROOT / "saelens" / name
    sae.to(dtype=getattr(torch, dtype)).save_model(folder)
    return folder, lambda: SAE.load_from_disk(folder, dtype="float32")


def saelens_legacy(name: str, seed: int) -> tuple[Path, Callable[[], SAE]]:
    """A pre-6.0 flat cfg.json (hook_point, activation_fn_str, normalize_activations false) on resid_pre."""
    folder = ROOT / "saelens" / name
    folder.mkdir(parents=True)
    w = weights(seed)
    save_file({k: w[k].contiguous() for k in ("W_enc", "W_dec", "b_enc", "b_dec")}, str(folder / "sae_weights.safetensors"))
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "model_name": "fixture",
           "hook_point": "blocks.3.hook_resid_pre", "hook_point_layer": 3, "activation_fn_str": "relu",
           "normalize_activations": False, "apply_b_dec_to_input": True, "context_size": 128}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder, lambda: SAE.load_from_disk(folder, dtype="float32")


def saelens_norm_release(name: str, seed: int, factor: float) -> tuple[Path, Callable[[], SAE]]:
    """An SAELens folder that states expected_average_only_in; its release records the factor,
    which sae-lens's from_pretrained folds into the weights."""
    folder, _ = saelens_folder(name, "standard", seed, normalize_activations="expected_average_only_in")
    HUB["fixture/saelens-norm"] = folder.parent
    register("fixture-saelens-norm", "fixture/saelens-norm", None, name, name, norm_scaling_factor=factor)
    return folder, lambda: from_release("fixture-saelens-norm", name)


def gemma_scope(seed: int) -> tuple[Path, Callable[[], SAE], dict[str, Any]]:
    """Gemma Scope: params.npz (W_enc, W_dec, b_enc, b_dec, threshold) at the canonical layer-2 path."""
    repo_id, path, _ = real_entry("gemma-scope-2b-pt-res-canonical", "layer_2/width_16k/canonical")
    hub = ROOT / "gemma_scope" / repo_id.split("/")[1]
    folder = hub / path
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in weights(seed).items()})
    HUB[repo_id] = hub
    # sae-lens's gemma_2 config hard-codes d_in (2304) and d_sae (from width_16k): the fixture's sizes override them
    register("fixture-gemma-scope", repo_id, "gemma_2", "layer_2/width_16k/canonical", path, overrides={"d_in": D_IN, "d_sae": D_SAE})
    meta = {"release": "gemma-scope-2b-pt-res-canonical", "sae_id": "layer_2/width_16k/canonical", "repo_id": repo_id, "path": path}
    return folder, lambda: from_release("fixture-gemma-scope", "layer_2/width_16k/canonical"), meta


def gemma_scope_2(seed: int) -> tuple[Path, Callable[[], SAE], dict[str, Any]]:
    """Gemma Scope 2: config.json (its published keys) + params.safetensors (lower-case names)."""
    release, sae_id = "gemma-scope-2-270m-pt-res-all", "layer_3_width_16k_l0_small"
    repo_id, path, _ = real_entry(release, sae_id)
    hub = ROOT / "gemma_scope_2" / repo_id.split("/")[1]
    folder = hub / path
    folder.mkdir(parents=True)
    w = weights(seed)
    save_file({"w_enc": w["W_enc"], "w_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"], "threshold": w["threshold"]},
              str(folder / "params.safetensors"))
    cfg = {"hf_hook_point_in": "model.layers.3.output", "hf_hook_point_out": "model.layers.3.output", "width": D_SAE,
           "model_name": "gemma-v3-270m-pt", "architecture": "jump_relu", "l0": 10, "affine_connection": False, "type": "sae"}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    HUB[repo_id] = hub
    register("fixture-gemma-scope-2", repo_id, "gemma_3", sae_id, path)
    meta = {"release": release, "sae_id": sae_id, "repo_id": repo_id, "path": path}
    return folder, lambda: from_release("fixture-gemma-scope-2", sae_id), meta


def llama_scope(seed: int) -> tuple[Path, Callable[[], SAE], dict[str, Any]]:
    """Llama Scope: hyperparams.json + checkpoints/final.safetensors (encoder.weight d_sae x d_model,
    decoder.weight d_model x d_sae). The dataset norm is chosen so that sqrt(d_model) / norm equals
    the real registry's norm_scaling_factor for l1r_8x: the fixture then also loads by release name."""
    release, sae_id = "llama_scope_lxr_8x", "l1r_8x"
    repo_id, path, factor = real_entry(release, sae_id)
    assert factor is not None
    hub = ROOT / "llama_scope" / repo_id.split("/")[1]
    folder = hub / path
    (folder / "checkpoints").mkdir(parents=True)
    w = weights(seed, enc_scale=1.0 / factor)  # pre-activations of the scaled input stay O(1)
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"],
               "decoder.weight": w["W_dec"].T.contiguous(), "decoder.bias": w["b_dec"]}, str(folder / "checkpoints" / "final.safetensors"))
    norm_in = D_IN**0.5 / factor
    hp = {"d_model": D_IN, "d_sae": D_SAE, "expansion_factor": D_SAE // D_IN, "hook_point_in": "blocks.1.hook_resid_post",
          "hook_point_out": "blocks.1.hook_resid_post", "act_fn": "jumprelu", "jump_relu_threshold": 0.4 / factor,
          "norm_activation": "dataset-wise", "dataset_average_activation_norm": {"in": norm_in, "out": norm_in},
          "apply_decoder_bias_to_pre_encoder": False, "use_decoder_bias": True, "sparsity_include_decoder_norm": True, "top_k": 50}
    (folder / "hyperparams.json").write_text(json.dumps(hp, indent=2) + "\n")
    HUB[repo_id] = hub
    register("fixture-llama-scope", repo_id, "llama_scope", sae_id, path, norm_scaling_factor=factor)
    meta = {"release": release, "sae_id": sae_id, "repo_id": repo_id, "path": path, "norm_scaling_factor": factor}
    return folder, lambda: from_release("fixture-llama-scope", sae_id), meta


def sparsify(seed: int) -> tuple[Path, Callable[[], SAE]]:
    """sparsify: layers.3/cfg.json + sae.safetensors (encoder.weight M x D, encoder.bias, W_dec M x D,
    b_dec). sae-lens's own sparsify loader transposes W_dec and fails on this layout (FACTS.md), so the
    reference is sae-lens's TopKSAE holding sparsify's weights: encode relu(top-k((x - b_dec) @ W_enc + b_enc))."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    folder = ROOT / "sparsify" / "layers.3"
    folder.mkdir(parents=True)
    w = weights(seed)
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]},
              str(folder / "sae.safetensors"))
    cfg = {"expansion_factor": D_SAE // D_IN, "normalize_decoder": True, "num_latents": D_SAE, "k": K, "multi_topk": False,
           "skip_connection": False, "transcode": False, "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")

    def load() -> SAE:
        sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, apply_b_dec_to_input=True, metadata=SAEMetadata(hook_name="blocks.3.hook_resid_post")))
        sae.load_state_dict({k: w[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")})
        return sae

    return folder, load


# ---- writing ------------------------------------------------------------------------------------


@torch.no_grad()
def expected(name: str, sae: SAE, x: torch.Tensor) -> dict[str, Any]:
    acts = sae.encode(x)
    recon = sae.decode(acts)
    save_file({"x": x.contiguous(), "acts": acts.contiguous(), "recon": recon.contiguous()}, str(ROOT / "expected" / f"{name}.safetensors"))
    return {"active_per_row": float((acts > 0).sum(-1).float().mean()), "max_act": float(acts.max())}


def sha256sums() -> None:
    lines = []
    for p in sorted(ROOT.rglob("*")):
        if p.is_file() and p.name != "SHA256SUMS":
            lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(ROOT).as_posix()}")
    (ROOT / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def main() -> None:
    if ROOT.exists():
        shutil.rmtree(ROOT)
    (ROOT / "expected").mkdir(parents=True)
    loaders.hf_hub_download = fake_hf_hub_download  # every converter calls it through this module
    loaders.get_safetensors_tensor_shapes = local_tensor_shapes
    x = fixed_input()
    rows: list[tuple[str, str, str, Path, Callable[[], SAE], dict[str, Any]]] = [
        ("saelens_standard", "saelens", "blocks.2.hook_resid_post", *saelens_folder("standard", "standard", 1), {}),
        ("saelens_standard_no_b_dec", "saelens", "blocks.2.hook_resid_post",
         *saelens_folder("standard_no_b_dec", "standard", 2, apply_b_dec_to_input=False), {}),
        ("saelens_topk", "saelens", "blocks.2.hook_resid_post", *saelens_folder("topk", "topk", 3, k=K), {}),
        ("saelens_topk_rescale", "saelens", "blocks.2.hook_resid_post",
         *saelens_folder("topk_rescale", "topk", 4, k=K, rescale_acts_by_decoder_norm=True), {}),
        ("saelens_jumprelu", "saelens", "blocks.2.hook_resid_post", *saelens_folder("jumprelu", "jumprelu", 5), {}),
        ("saelens_bf16", "saelens", "blocks.2.hook_resid_post", *saelens_folder("bf16", "topk", 6, dtype="bfloat16", k=K), {}),
        ("saelens_legacy_resid_pre", "saelens", "blocks.3.hook_resid_pre", *saelens_legacy("legacy_resid_pre", 7), {}),
        ("saelens_norm_release", "saelens", "blocks.2.hook_resid_post", *saelens_norm_release("norm_release", 8, 2.5),
         {"norm_scaling_factor": 2.5}),
        ("gemma_scope", "gemma_scope", "blocks.2.hook_resid_post", *gemma_scope(9)),
        ("gemma_scope_2", "gemma_scope_2", "blocks.3.hook_resid_post", *gemma_scope_2(10)),
        ("llama_scope", "llama_scope", "blocks.1.hook_resid_post", *llama_scope(11)),
        ("sparsify", "sparsify", "layers.3", *sparsify(12), {}),
    ]
    manifest = []
    for name, family, hook, folder, load, meta in rows:
        stats = expected(name, load(), x)
        manifest.append({"name": name, "family": family, "folder": folder.relative_to(ROOT).as_posix(), "hook": hook, **meta, **stats})
        print(f"{name:28s} {family:14s} active/row {stats['active_per_row']:5.1f}  max {stats['max_act']:.3f}")
    doc = {"made_by": f"scripts/make_sae_fixtures.py with sae-lens {sae_lens.__version__}, torch {torch.__version__}, "
                      f"python {sys.version.split()[0]}", "d_in": D_IN, "d_sae": D_SAE, "fixtures": manifest}
    (ROOT / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    sha256sums()


if __name__ == "__main__":
    main()
