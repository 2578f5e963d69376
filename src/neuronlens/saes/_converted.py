"""Readers of the SAE families whose files sae-lens converts on load, matching sae-lens 6.54's
loaders: Gemma Scope (``params.npz``), Gemma Scope 2 (``config.json`` + ``params.safetensors``)
and Llama Scope (``hyperparams.json`` + ``checkpoints/final.safetensors``, its input norm folded
into the weights), each with the hook it reads, and the helpers they share (tensors checked and
renamed to SAELens's names, JSON and safetensors read with errors that name the file).
"""

from __future__ import annotations

import json
import math
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..errors import SAEError
from ._formats import _build, layer_from_hook
from ._layout import Registered, check_registered
from ._norm import fold_input_scale, input_scale
from ._sae import SAEInfo, SparseAutoencoder, check_finite


# ---- shared helpers for the converted families ---------------------------------------------------


def _tensors(raw: Mapping[str, Any], where: Path, names: Mapping[str, str], matrices: Sequence[str]) -> dict[str, torch.Tensor]:
    """`raw`'s tensors renamed by `names` (file name -> SAELens name) in float32, each present,
    finite and of the rank its role needs; an SAEError naming the file and tensor otherwise."""
    missing = sorted(set(names) - set(raw))
    if missing:
        raise SAEError(f"{where} lacks tensors {missing} (it has {sorted(raw)}).", "Re-download the SAE: the file is not a whole one.")
    try:
        out = {new: torch.as_tensor(raw[old]).to(torch.float32) for old, new in names.items()}
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. an array of strings
        raise SAEError(f"{where} holds a tensor that is not numbers: {exc}.", "Re-download the SAE.") from exc
    check_finite(out, str(where))
    for old, new in names.items():
        if out[new].dim() != (2 if old in matrices else 1):
            raise SAEError(f"{where}: tensor {old!r} has shape {tuple(out[new].shape)}, of the wrong rank.",
                           "Re-download the SAE; its weights are not an SAE's.")
    return out


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise SAEError(f"{path} is not a readable safetensors file: {exc}.", "Re-download the SAE.") from exc


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SAEError(f"{path} cannot be read as JSON: {exc}.", "Re-download the SAE.") from exc
    if not isinstance(data, dict):
        raise SAEError(f"{path} holds a JSON {type(data).__name__}, not an object of settings.", "Re-download the SAE.")
    return data


def _info(folder: Path, reg: Registered, family: str, hook: str, w: Mapping[str, torch.Tensor], **kw: Any) -> SAEInfo:
    d_in, d_sae = w["W_enc"].shape
    return SAEInfo(d_in=int(d_in), d_sae=int(d_sae), layer=layer_from_hook(hook, reg.label or str(folder)), hook_name=hook,
                   source=reg.label or str(folder), format=family, **kw)


def _layer_number(text: str, where: Path) -> int:
    """The N of the last `layer_N` in `text` (a path or folder name)."""
    m = re.findall(r"layer_(\d+)", text)
    if not m:
        raise SAEError(f"{where}: no layer_N in the path, so the SAE's layer is unknown.",
                       "Point at the SAE's folder as its release lays it out (e.g. layer_12/width_16k/average_l0_82).")
    return int(m[-1])


# ---- Gemma Scope (1): params.npz ----------------------------------------------------------------

GEMMA_NPZ = "params.npz"
_GEMMA_REPO = re.compile(r"gemma-scope-[\w.-]+?-(res|mlp|att|transcoders)(?:-canonical)?(?=$|[^\w-])")
_GEMMA_SITES = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z", "transcoders": "ln2.hook_normalized"}


def _gemma_scope_hook(folder: Path, reg: Registered) -> str:
    """sae-lens's rule: the site from the repo name (-res, -mlp, -att), the layer from layer_N;
    an `embedding` SAE reads hook_embed. The repo name is looked for in the folder's path (a hub
    cache's models--google--gemma-scope-2b-pt-res); without one, residual is assumed, with a warning."""
    if reg.hook:
        return reg.hook
    path = folder.absolute().as_posix()
    if "/embedding/" in f"{path}/":
        return "hook_embed"
    layer = _layer_number(path, folder)
    sites = _GEMMA_REPO.findall(path)
    if not sites:
        warnings.warn(f"{folder}: the path names no Gemma Scope repo (gemma-scope-*-res, -mlp or -att), so which site "
                      f"this SAE reads is unknown; assuming the residual stream (blocks.{layer}.hook_resid_post). Load it "
                      "by release name (--sae gemma-scope-2b-pt-res-canonical:layer_12/width_16k/canonical) to be sure.",
                      stacklevel=4)
        return f"blocks.{layer}.hook_resid_post"
    return f"blocks.{layer}.{_GEMMA_SITES[sites[-1]]}"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npz, never unpickling: an object array is an error, not code to run."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise SAEError(f"{path} is not a readable .npz of plain arrays: {exc}.", "Re-download the SAE.") from exc


def _read_gemma_scope(folder: Path, reg: Registered) -> SparseAutoencoder:
    check_registered(reg, folder)
    hook = _gemma_scope_hook(folder, reg)
    path = folder / GEMMA_NPZ
    raw = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in _read_npz(path).items()}
    _check_scaling_factor(raw, path)
    w = _tensors(raw, path, {n: n for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}, ("W_enc", "W_dec"))
    return _build(_info(folder, reg, "gemma_scope", hook, w, architecture="jumprelu", apply_b_dec_to_input=False), w)


def _check_scaling_factor(raw: Mapping[str, Any], path: Path) -> None:
    """sae-lens drops a `scaling_factor` of ones and refuses any other without a fine-tuning flag."""
    if "scaling_factor" in raw and not np.allclose(np.asarray(raw["scaling_factor"], dtype=np.float64), 1.0):
        raise SAEError(f"{path} holds a scaling_factor other than 1, which sae-lens also refuses to load.",
                       "Use the SAE without a fine-tuning scaling factor.")


# ---- Gemma Scope 2: config.json + params.safetensors ---------------------------------------------

GEMMA2_CFG, GEMMA2_WEIGHTS = "config.json", "params.safetensors"
_HF_RESID = re.compile(r"^model\.layers\.(\d+)\.output$")
_HF_SITES = (("self_attn.o_proj.input", "attn.hook_z"), ("post_feedforward_layernorm.output", "hook_mlp_out"),
             ("pre_feedforward_layernorm.output", "hook_mlp_in"))
_PATH_SITES = (("transcoder", "hook_mlp_in"), ("clt", "hook_mlp_in"), ("resid_post", "hook_resid_post"),
               ("attn_out", "attn.hook_z"), ("mlp_out", "hook_mlp_out"))


def _gemma_scope_2_hook(folder: Path, reg: Registered) -> str:
    """The hook from config.json's `hf_hook_point_in` (model.layers.L.output is resid_post L; a
    transcoder's reads the MLP input); without it, from the path as sae-lens does."""
    cfg = _json(folder / GEMMA2_CFG)
    hf_in, hf_out = cfg.get("hf_hook_point_in"), cfg.get("hf_hook_point_out")
    m = re.search(r"layers\.(\d+)", hf_in) if isinstance(hf_in, str) else None
    layer = int(m.group(1)) if m else _layer_number(folder.name, folder)
    if cfg.get("type") == "transcoder" or cfg.get("affine_connection") or hf_out not in (None, hf_in):
        return f"blocks.{layer}.hook_mlp_in -> hook_mlp_out (a transcoder)"
    if isinstance(hf_in, str):
        if _HF_RESID.match(hf_in):
            return f"blocks.{layer}.hook_resid_post"
        return f"blocks.{layer}." + next((tl for hf, tl in _HF_SITES if hf_in.endswith(hf)), hf_in)
    path = folder.absolute().as_posix()
    site = next((tl for name, tl in _PATH_SITES if name in path), None)
    if site is None:
        raise SAEError(f"{folder / GEMMA2_CFG} names no hook point (hf_hook_point_in) and the path names no site.",
                       "Point at the SAE's folder as Gemma Scope 2 lays it out (e.g. resid_post/layer_12_width_16k_l0_small).")
    return f"blocks.{layer}.{site}"


def _read_gemma_scope_2(folder: Path, reg: Registered) -> SparseAutoencoder:
    check_registered(reg, folder)
    hook = _gemma_scope_2_hook(folder, reg)
    cfg = _json(folder / GEMMA2_CFG)
    arch = cfg.get("architecture", "jump_relu")
    if arch != "jump_relu":
        raise SAEError(f"{folder / GEMMA2_CFG} says architecture {arch!r}; Gemma Scope 2 SAEs are 'jump_relu'.",
                       "Re-download the SAE (sae-lens refuses this too).")
    path = folder / GEMMA2_WEIGHTS
    raw = _safetensors(path)
    if "affine_skip_connection" in raw:
        raise SAEError(f"{path} holds an affine skip connection: it is a transcoder, not an SAE of one site.",
                       "Use a Gemma Scope 2 residual SAE (resid_post), e.g. --sae gemma-scope-2-1b-pt-res.")
    names = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}
    w = _tensors(raw, path, names, ("w_enc", "w_dec"))
    info = _info(folder, reg, "gemma_scope_2", hook, w, architecture="jumprelu", apply_b_dec_to_input=False,
                 model_name=cfg.get("model_name"))
    return _build(info, w)


# ---- Llama Scope: hyperparams.json + checkpoints/final.safetensors -------------------------------

LLAMA_CFG, LLAMA_WEIGHTS = "hyperparams.json", "checkpoints/final.safetensors"


def _llama_scope_hook(folder: Path, reg: Registered) -> str:
    hp = _json(folder / LLAMA_CFG)
    hook_in, hook_out = hp.get("hook_point_in"), hp.get("hook_point_out", hp.get("hook_point_in"))
    if not isinstance(hook_in, str):
        raise SAEError(f"{folder / LLAMA_CFG} names no hook_point_in.", "Re-download the SAE's hyperparams.json.")
    return hook_in if hook_out == hook_in else f"{hook_in} -> {hook_out} (a transcoder)"


def _llama_numbers(hp: Mapping[str, Any], where: Path) -> tuple[int, float, float]:
    """d_model, the input scale sqrt(d_model) / dataset average norm, and the JumpReLU threshold."""
    try:
        d_model, norm_in = int(hp["d_model"]), float(hp["dataset_average_activation_norm"]["in"])
        threshold = float(hp["jump_relu_threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SAEError(f"{where} lacks d_model, dataset_average_activation_norm.in or jump_relu_threshold ({exc!r}).",
                       "Re-download the SAE's hyperparams.json.") from exc
    if not (norm_in > 0 and math.isfinite(norm_in) and math.isfinite(threshold) and d_model > 0):
        raise SAEError(f"{where}: dataset_average_activation_norm.in={norm_in}, jump_relu_threshold={threshold}, "
                       f"d_model={d_model}; the norm must be positive and all finite.", "Re-download the SAE's hyperparams.json.")
    return d_model, d_model**0.5 / norm_in, threshold


def _read_llama_scope(folder: Path, reg: Registered) -> SparseAutoencoder:
    """As sae-lens 6.54 loads it: W_enc = encoder.weight.T, W_dec = decoder.weight.T, a threshold
    of jump_relu_threshold * s for every latent, no b_dec subtraction, then the input scale folded
    in (W_enc * f, W_dec / f, b_dec / f) with f = the registry's norm_scaling_factor, else s,
    where s = sqrt(d_model) / dataset_average_activation_norm.in (the registry's f is that s)."""
    check_registered(reg, folder)
    hook = _llama_scope_hook(folder, reg)
    d_model, scale, threshold = _llama_numbers(_json(folder / LLAMA_CFG), folder / LLAMA_CFG)
    path = folder / LLAMA_WEIGHTS
    names = {"encoder.weight": "W_enc", "decoder.weight": "W_dec", "encoder.bias": "b_enc", "decoder.bias": "b_dec"}
    w = _tensors(_safetensors(path), path, names, ("encoder.weight", "decoder.weight"))
    w["W_enc"], w["W_dec"] = w["W_enc"].T.contiguous(), w["W_dec"].T.contiguous()
    w["threshold"] = torch.ones(w["b_enc"].shape[0], dtype=torch.float32) * (threshold * scale)
    info = _info(folder, reg, "llama_scope", hook, w, architecture="jumprelu", apply_b_dec_to_input=False)
    if info.d_in != d_model:
        raise SAEError(f"{folder / LLAMA_CFG} says d_model={d_model}, but the weights read {info.d_in}-vectors.",
                       "Re-download the SAE: its hyperparams.json and weights are from different SAEs.")
    factor = input_scale("expected_average_only_in", info.source, reg.norm_scaling_factor or scale)
    return fold_input_scale(_build(info, w), float(factor))  # type: ignore[arg-type]
