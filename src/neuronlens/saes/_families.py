"""SAE families: how each publisher lays one SAE out on disk, and how to read it as sae-lens does.

Each :class:`Family` names the files that identify one SAE's folder, reads the hook the SAE
reads from its small files (no weights), and reads the SAE. :data:`FAMILIES` is the registry;
:func:`find_saes` walks a folder (nested release layouts included) and :func:`choose` picks one
SAE per audited layer, loading only those. Readers match sae-lens 6.54's loaders
(``sae_lens/loading/pretrained_sae_loaders.py``); tests/fixtures/saes holds sae-lens's own encodes.

- SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (:func:`load_saelens`).
- sparsify: ``cfg.json`` + ``sae.safetensors`` in ``layers.N`` (:func:`load_sparsify`).
- Gemma Scope: ``params.npz`` in ``layer_L/width_W/average_l0_N`` (JumpReLU, no b_dec subtraction).
- Gemma Scope 2: ``config.json`` + ``params.safetensors`` (lower-case keys, JumpReLU).
- Llama Scope: ``hyperparams.json`` + ``checkpoints/final.safetensors`` (JumpReLU with one scalar
  threshold; the dataset-wise input norm is folded into the weights as sae-lens folds it).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..errors import SAEError
from ._formats import CFG, SAELENS_WEIGHTS, SPARSIFY_WEIGHTS, _build, _read_cfg, layer_from_hook, load_saelens, load_sparsify
from ._norm import check_processing, fold_input_scale, input_scale
from ._sae import SAEInfo, SparseAutoencoder, check_finite


@dataclass(frozen=True)
class Registered:
    """What sae-lens's registry adds to an SAE's own files (empty for a folder given directly)."""

    hook: str | None = None
    """The hook the registry implies (Gemma Scope's files do not say which site they read)."""
    norm_scaling_factor: float | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """The release's ``config_overrides`` (normalisation, TransformerLens processing...)."""
    label: str | None = None
    """``release:sae_id``, recorded as the SAE's source."""


NOTHING = Registered()


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    files: tuple[str, ...]
    """Paths, relative to one SAE's folder, that all exist in this family's layout."""
    hook: Callable[[Path, Registered], str]
    """The TransformerLens hook the SAE reads, from its small files or its path."""
    read: Callable[[Path, Registered], SparseAutoencoder]
    converters: tuple[str, ...] = ()
    """sae-lens's ``conversion_func`` names for releases in this layout."""

    def matches(self, folder: Path) -> bool:
        return all((folder / f).is_file() for f in self.files)


# ---- SAELens and sparsify (the readers live in _formats) ----------------------------------------


def _saelens_hook(folder: Path, reg: Registered) -> str:
    cfg = _read_cfg(folder)
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not hook:
        raise SAEError(f"{folder / CFG} does not name its hook point.", "Add metadata.hook_name, e.g. blocks.12.hook_resid_post.")
    return str(hook)


def _read_saelens(folder: Path, reg: Registered) -> SparseAutoencoder:
    check_registered(reg, folder)
    sae = load_saelens(folder, norm_scaling_factor=reg.norm_scaling_factor)
    sae.info.source = reg.label or sae.info.source
    return sae


def check_registered(reg: Registered, folder: Path) -> None:
    """Registry settings that decide what the SAE reads: TransformerLens processing, normalisation."""
    where = f"{reg.label or folder}"
    check_processing(reg.overrides.get("model_from_pretrained_kwargs"), where)
    if "normalize_activations" in reg.overrides:
        input_scale(reg.overrides["normalize_activations"], where, reg.norm_scaling_factor)


def _read_sparsify(folder: Path, reg: Registered) -> SparseAutoencoder:
    return load_sparsify(folder)


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


# ---- the registry -------------------------------------------------------------------------------

FAMILIES: tuple[Family, ...] = (
    Family("saelens", "SAELens", (CFG, SAELENS_WEIGHTS), _saelens_hook, _read_saelens, ("sae_lens",)),
    Family("sparsify", "sparsify", (CFG, SPARSIFY_WEIGHTS), lambda f, r: f.name, _read_sparsify, ("sparsify",)),
    Family("gemma_scope", "Gemma Scope", (GEMMA_NPZ,), _gemma_scope_hook, _read_gemma_scope, ("gemma_2",)),
    Family("gemma_scope_2", "Gemma Scope 2", (GEMMA2_CFG, GEMMA2_WEIGHTS), _gemma_scope_2_hook, _read_gemma_scope_2, ("gemma_3",)),
    Family("llama_scope", "Llama Scope", (LLAMA_CFG, LLAMA_WEIGHTS), _llama_scope_hook, _read_llama_scope, ("llama_scope",)),
)
"""Every on-disk layout NeuronLens reads, tried in this order (the first whose files exist)."""

REFUSED_CONVERTERS: dict[str, str] = {
    "connor_rob_hook_z": "attention-output (hook_z) SAEs stored as PyTorch pickles",
    "gemma_2_transcoder": "Gemma Scope transcoders (they read the MLP input and write the MLP output)",
    "mwhanna_transcoder": "transcoders (they read the MLP input and write the MLP output)",
    "mntss_clt_layer_transcoder": "cross-layer transcoders",
    "temporal": "temporal SAEs (they attend over earlier tokens)",
    "dictionary_learning_1": "dictionary_learning checkpoints (ae.pt pickles), which NeuronLens has no reader for yet",
    "deepseek_r1": "PyTorch-pickle (.pt) SAEs, which NeuronLens has no reader for yet",
    "qwen_scope": "Qwen Scope PyTorch-pickle (.sae.pt) SAEs, which NeuronLens has no reader for yet",
    "goodfire": "Goodfire PyTorch-pickle (.pt/.pth) SAEs, which NeuronLens has no reader for yet",
    "llama_scope_r1_distill": "Llama Scope R1-distill SAEs, which NeuronLens has no reader for yet",
}
"""sae-lens converters whose releases NeuronLens refuses by name, and why."""


def family_for_converter(converter: str | None) -> Family | None:
    name = converter or "sae_lens"
    return next((f for f in FAMILIES if name in f.converters), None)


def family_of(folder: Path) -> Family | None:
    return next((f for f in FAMILIES if f.matches(folder)), None)


# ---- finding and choosing SAEs in a folder ------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """One SAE's folder, its family and the hook it reads (its weights not read yet)."""

    folder: Path
    family: Family
    hook: str
    reg: Registered = NOTHING

    def layer(self) -> int | SAEError:
        """The residual layer NeuronLens feeds it, or the error that refuses it, naming its family."""
        try:
            return layer_from_hook(self.hook, str(self.folder))
        except SAEError as exc:
            return SAEError(f"{self.reg.label or self.folder} is a {self.family.title} SAE that reads {self.hook!r}, "
                            "not the residual stream after a decoder block, which is what NeuronLens audits.", exc.fix)

    def read(self) -> SparseAutoencoder:
        layer = self.layer()
        if isinstance(layer, SAEError):
            raise layer
        return self.family.read(self.folder, self.reg)


def find_saes(source: Path) -> list[Found]:
    """Every SAE folder under `source` (itself included, any depth, symlinks followed; hidden
    folders skipped). A matched folder is not searched further (Llama Scope's checkpoints/ is its own)."""
    if not source.exists():
        raise SAEError(f"SAE source {str(source)!r} does not exist.", "Pass a folder holding SAEs (see --help for the layouts).")
    found: list[Found] = []
    seen: set[str] = set()  # symlinked folders are followed, each real folder once (no loops)
    for root, dirs, _files in os.walk(source, followlinks=True):
        folder, real = Path(root), os.path.realpath(root)
        family = family_of(folder) if real not in seen else None
        if family is not None:
            found.append(Found(folder, family, family.hook(folder, NOTHING)))
        seen.add(real)
        fresh = (d for d in dirs if not d.startswith(".") and os.path.realpath(Path(root, d)) not in seen)
        dirs[:] = [] if family is not None else sorted(fresh)
    return found


LAYOUTS = (f"{CFG} + {SAELENS_WEIGHTS} (SAELens), {CFG} + {SPARSIFY_WEIGHTS} (sparsify), {GEMMA_NPZ} (Gemma Scope), "
           f"{GEMMA2_CFG} + {GEMMA2_WEIGHTS} (Gemma Scope 2) or {LLAMA_CFG} + {LLAMA_WEIGHTS} (Llama Scope)")


def choose(found: Sequence[Found], layers: Sequence[int], source: str) -> dict[int, Found]:
    """One SAE per layer of `layers` from `found`; an SAEError when a layer has none (naming a
    refused SAE's reason when that is all there is) or several (listing them)."""
    if not found:
        raise SAEError(f"No SAE found in {source!r}.", f"Expected {LAYOUTS}, in the folder or in its sub-folders.")
    usable: dict[int, list[Found]] = {}
    refused: list[SAEError] = []
    for f in found:
        layer = f.layer()
        if isinstance(layer, SAEError):
            refused.append(layer)
        else:
            usable.setdefault(layer, []).append(f)
    missing = [layer for layer in layers if layer not in usable]
    if missing and refused and not usable:
        raise refused[0]
    if missing:
        raise SAEError(f"{source} has no SAE for layer(s) {missing} (it has layers {sorted(usable)}).",
                       f"Audit layers {sorted(usable)} (--layers), or add SAEs for the missing layers.")
    for layer in layers:
        if len(usable[layer]) > 1:
            raise _several(layer, usable[layer], source)
    return {layer: usable[layer][0] for layer in layers}


def _several(layer: int, options: Sequence[Found], source: str) -> SAEError:
    root = Path(source)
    names = [f"{_relative(f.folder, root)} ({f.family.title}, {f.hook})" for f in options]
    return SAEError(f"{source} holds {len(options)} SAEs for layer {layer}: {'; '.join(names)}.",
                    "Choose one: point --sae (source=) at that SAE's own folder, or load by release name "
                    "(--sae RELEASE:SAE_ID, or load_sae(..., release=, sae_id=)).")


def _relative(folder: Path, root: Path) -> str:
    try:
        return folder.relative_to(root).as_posix() or "."
    except ValueError:
        return str(folder)


def load_folder(source: Path, layers: Sequence[int], label: str) -> dict[int, SparseAutoencoder]:
    """The SAEs for `layers` from the folder `source` (`label` is how the user named it)."""
    chosen = choose(find_saes(source), layers, label)
    return {layer: f.read() for layer, f in chosen.items()}
