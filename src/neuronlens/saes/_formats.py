"""Reading and writing SAEs in SAELens's and EleutherAI-sparsify's folder formats.

SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (W_enc [d_in, d_sae], W_dec [d_sae, d_in],
b_enc, b_dec, and ``threshold`` for JumpReLU); v6 configs keep the hook under ``metadata``,
older ones use flat keys (``hook_name``/``hook_point``, ``activation_fn_str``...).
sparsify: ``cfg.json`` + ``sae.safetensors`` (encoder.weight [d_sae, d_in], encoder.bias,
W_dec [d_sae, d_in], b_dec), in folders named after the hookpoint, e.g. ``layers.12``.
Both are read natively: sae-lens itself adds ~1 GB of dependencies (../shared/FACTS.md), and
its own sparsify loader fails on real sparsify output.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .._io import publish_dir
from ..errors import SAEError
from ._norm import check_processing, fold_input_scale, input_scale
from ._sae import ARCHITECTURES, SAEInfo, SparseAutoencoder, check_finite, check_layout

SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
CFG = "cfg.json"

_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_SPARSIFY_LAYER = re.compile(r"^(?:model\.)?(?:layers|h|transformer\.h|gpt_neox\.layers)\.(\d+)$")


def layer_from_hook(hook_name: str, where: str) -> int:
    """Residual-stream layer index (output of decoder block L) of a SAELens or sparsify hook."""
    if m := _RESID_POST.match(hook_name):
        return int(m.group(1))
    if (m := _RESID_PRE.match(hook_name)) and int(m.group(1)) > 0:
        return int(m.group(1)) - 1  # the input of block L is the output of block L-1
    if m := _SPARSIFY_LAYER.match(hook_name):
        return int(m.group(1))
    raise SAEError(
        f"SAE at {where} hooks {hook_name!r}, which is not the residual stream after a decoder block.",
        "NeuronLens audits the residual stream: use SAEs trained on blocks.L.hook_resid_post "
        "(SAELens) or layers.L (sparsify).",
    )


def _read_cfg(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / CFG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise SAEError(f"{folder / CFG} cannot be read as JSON: {exc}.", "Re-save the SAE, or point at another folder.") from exc
    if not isinstance(cfg, dict):
        raise SAEError(f"{folder / CFG} holds a JSON {type(cfg).__name__}, not an object of SAE settings.",
                       "Re-save the SAE, or point at another folder.")
    return cfg


def _load_weights(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The `required` (and present `optional`) tensors of `path` in float32, each finite and a
    matrix or vector as its name says; an SAEError naming the file and tensor otherwise."""
    try:
        weights = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise SAEError(f"{path} is not a readable safetensors file: {exc}.", "Re-download or re-save the SAE.") from exc
    missing = set(required) - set(weights)
    if missing:
        raise SAEError(f"{path} lacks tensors {sorted(missing)}.", "Re-save the SAE in the format it was trained in.")
    used = {name: weights[name].to(torch.float32) for name in (*required, *optional) if name in weights}
    check_finite(used, str(path))  # in float32, as encoded: a float64 1e300 is Inf there
    flat = [name for name, t in used.items() if t.dim() != (2 if name.startswith("W_") or name.endswith(".weight") else 1)]
    if flat:
        raise SAEError(f"{path}: tensor {flat[0]!r} has shape {tuple(used[flat[0]].shape)}, of the wrong rank.",
                       "Re-save the SAE; its weights are not an SAE's.")
    return used


def _whole(value: Any) -> Any:
    """A JSON count as an int when it is one (32 or 32.0); anything else as is, for the checks."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _check_cfg_size(cfg: dict[str, Any], key: str, actual: int, where: Path) -> None:
    """An SAEError when cfg.json states `key` (d_in, d_sae...) and the weights disagree."""
    stated = cfg.get(key)
    if stated not in (None, 0) and _whole(stated) != actual:
        raise SAEError(f"{where / CFG} says {key}={stated!r}, but the weights have {actual}.",
                       f"Correct {key} in cfg.json, or re-save the SAE: its config and weights are from different SAEs.")


def _cfg_k(cfg: dict[str, Any]) -> Any:
    k = cfg.get("k")
    return _whole(k if k is not None else (cfg.get("activation_fn_kwargs") or {}).get("k"))


def _neuronlens_block(cfg: dict[str, Any], folder: Path) -> dict[str, Any]:
    """NeuronLens's own entry of a cfg.json (model digest, quality metrics, training settings)."""
    block = cfg.get("neuronlens") or {}
    if not isinstance(block, dict) or not isinstance(block.get("metrics", {}), dict):
        raise SAEError(f"{folder / CFG} has a \"neuronlens\" entry that is not an object with a \"metrics\" object.",
                       "Remove the \"neuronlens\" entry, or re-save the SAE with NeuronLens.")
    return block


def load_saelens(folder: Path, *, norm_scaling_factor: float | None = None) -> SparseAutoencoder:
    """An SAELens folder as sae-lens reads it; `norm_scaling_factor` (from sae-lens's registry) is
    folded in when cfg.json says normalize_activations='expected_average_only_in' (see _norm)."""
    cfg = _read_cfg(folder)
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not hook:
        raise SAEError(f"{folder / CFG} does not name its hook point.", "Add metadata.hook_name, e.g. blocks.12.hook_resid_post.")
    arch = cfg.get("architecture")
    act = cfg.get("activation_fn_str") or cfg.get("activation_fn")
    if arch is None:
        arch = "topk" if act == "topk" else "standard"
    if arch == "relu":
        arch = "standard"
    if arch not in ARCHITECTURES:  # before the weights: a gated SAE's would only be "missing b_enc"
        raise SAEError(f"SAE at {folder} has architecture {arch!r}, which NeuronLens cannot encode with.",
                       f"Use a {', '.join(ARCHITECTURES)} SAE.")
    scale = input_scale(cfg.get("normalize_activations"), str(folder), norm_scaling_factor)
    check_processing(meta.get("model_from_pretrained_kwargs") or cfg.get("model_from_pretrained_kwargs"), str(folder))
    weights = _load_weights(folder / SAELENS_WEIGHTS, ("W_enc", "b_enc", "W_dec", "b_dec"), ("threshold",))
    d_in, d_sae = weights["W_enc"].shape
    _check_cfg_size(cfg, "d_in", d_in, folder)
    _check_cfg_size(cfg, "d_sae", d_sae, folder)
    nl = _neuronlens_block(cfg, folder)
    info = SAEInfo(
        d_in=int(d_in),
        d_sae=int(d_sae),
        architecture=arch,
        layer=layer_from_hook(hook, str(folder)),
        hook_name=hook,
        k=_cfg_k(cfg) if arch == "topk" else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        model_name=meta.get("model_name") or cfg.get("model_name"),
        model_digest=nl.get("model_digest"),
        source=str(folder),
        format="saelens",
        metrics=nl.get("metrics", {}),
        training=nl.get("training", {}),
    )
    sae = _build(info, weights)
    return sae if scale is None else fold_input_scale(sae, scale)


def load_sparsify(folder: Path) -> SparseAutoencoder:
    cfg = _read_cfg(folder)
    if cfg.get("transcode"):
        raise SAEError(f"{folder} is a transcoder, not an SAE.", "Use an SAE trained to reconstruct the residual stream.")
    if cfg.get("activation", "topk") != "topk":
        raise SAEError(f"{folder} uses activation {cfg.get('activation')!r}.", "Only TopK sparsify SAEs are supported.")
    w = _load_weights(folder / SPARSIFY_WEIGHTS, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"))
    d_sae, d_in = w["encoder.weight"].shape
    _check_cfg_size(cfg, "d_in", d_in, folder)
    _check_cfg_size(cfg, "num_latents", d_sae, folder)
    info = SAEInfo(
        d_in=int(d_in),
        d_sae=int(d_sae),
        architecture="topk",
        layer=layer_from_hook(folder.name, str(folder)),
        hook_name=folder.name,
        k=_whole(cfg.get("k")),
        apply_b_dec_to_input=True,
        source=str(folder),
        format="sparsify",
    )
    weights = {"W_enc": w["encoder.weight"].T.contiguous(), "b_enc": w["encoder.bias"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    return _build(info, weights)


def _build(info: SAEInfo, weights: dict[str, torch.Tensor]) -> SparseAutoencoder:
    state = {k: v for k, v in weights.items() if k != "threshold" or info.architecture == "jumprelu"}
    check_layout(info, state, info.source)
    sae = SparseAutoencoder(info)
    sae.load_state_dict(state, strict=True)
    sae.requires_grad_(False)
    return sae


def save_saelens(
    sae: SparseAutoencoder,
    folder: str | os.PathLike[str],
    *,
    dtype: torch.dtype = torch.float32,
    before_publish: Callable[[Path], None] | None = None,
) -> Path:
    """Write `sae` as a SAELens folder; the folder appears whole or not at all. `before_publish`
    may add files to the finished temporary folder (the cache's seal) before it takes its name."""
    info = sae.info
    cfg: dict[str, Any] = {
        "architecture": info.architecture,
        "d_in": info.d_in,
        "d_sae": info.d_sae,
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": info.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": info.model_name, "hook_name": info.hook_name, "prepend_bos": True},
        "neuronlens": {"model_digest": info.model_digest, "metrics": info.metrics, "training": info.training},
    }
    if info.architecture == "topk":
        cfg["k"] = info.k
        cfg["rescale_acts_by_decoder_norm"] = info.rescale_acts_by_decoder_norm
    target = Path(folder)
    with publish_dir(target) as staged:
        save_file({k: v.to(dtype).contiguous() for k, v in sae.tensors().items()}, str(staged.path / SAELENS_WEIGHTS))
        (staged.path / CFG).write_text(json.dumps(cfg, indent=2) + "\n")
        if before_publish is not None:
            before_publish(staged.path)
    return target


def discover(source: Path) -> list[SparseAutoencoder]:
    """Every SAE under `source`, of any family in _families.FAMILIES, read (load_sae reads only
    the ones it chooses: _families.load_folder)."""
    from ._families import LAYOUTS, find_saes  # _families imports this module

    found = find_saes(source)
    if not found:
        raise SAEError(f"No SAE found in {str(source)!r}.", f"Expected {LAYOUTS}, in the folder or in its sub-folders.")
    return [f.read() for f in found]
