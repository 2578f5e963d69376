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
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .._io import make_temp_dir
from ..errors import SAEError
from ._sae import ARCHITECTURES, SAEInfo, SparseAutoencoder

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


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise SAEError(f"{path} is not a readable safetensors file: {exc}.", "Re-download or re-save the SAE.") from exc


def load_saelens(folder: Path) -> SparseAutoencoder:
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
    if arch not in ARCHITECTURES:
        raise SAEError(
            f"SAE at {folder} has architecture {arch!r}, which NeuronLens cannot encode with.",
            f"Use a {', '.join(ARCHITECTURES)} SAE.",
        )
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if arch == "topk" and not k:
        raise SAEError(f"TopK SAE at {folder} has no k in cfg.json.", "Add \"k\": <int> to cfg.json.")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise SAEError(
            f"SAE at {folder} expects normalize_activations={cfg['normalize_activations']!r}.",
            "Fold the normalisation into the weights first (SAELens: fold_activation_norm_scaling_factor).",
        )
    weights = _load_weights(folder / SAELENS_WEIGHTS)
    missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(weights)
    if missing:
        raise SAEError(f"{folder / SAELENS_WEIGHTS} lacks tensors {sorted(missing)}.", "Re-save the SAE in SAELens format.")
    d_in, d_sae = weights["W_enc"].shape
    info = SAEInfo(
        d_in=int(d_in),
        d_sae=int(d_sae),
        architecture=arch,
        layer=layer_from_hook(hook, str(folder)),
        hook_name=hook,
        k=int(k) if k else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        model_name=meta.get("model_name") or cfg.get("model_name"),
        model_digest=(cfg.get("neuronlens") or {}).get("model_digest"),
        source=str(folder),
        format="saelens",
        metrics=(cfg.get("neuronlens") or {}).get("metrics", {}),
        training=(cfg.get("neuronlens") or {}).get("training", {}),
    )
    if weights["W_dec"].shape != (d_sae, d_in):
        raise SAEError(f"{folder}: W_dec has shape {tuple(weights['W_dec'].shape)}, expected {(d_sae, d_in)}.", "Re-save the SAE.")
    return _build(info, weights)


def load_sparsify(folder: Path) -> SparseAutoencoder:
    cfg = _read_cfg(folder)
    if cfg.get("transcode"):
        raise SAEError(f"{folder} is a transcoder, not an SAE.", "Use an SAE trained to reconstruct the residual stream.")
    if cfg.get("activation", "topk") != "topk":
        raise SAEError(f"{folder} uses activation {cfg.get('activation')!r}.", "Only TopK sparsify SAEs are supported.")
    w = _load_weights(folder / SPARSIFY_WEIGHTS)
    missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(w)
    if missing:
        raise SAEError(f"{folder / SPARSIFY_WEIGHTS} lacks tensors {sorted(missing)}.", "Re-save with sparsify.")
    d_sae, d_in = w["encoder.weight"].shape
    info = SAEInfo(
        d_in=int(d_in),
        d_sae=int(d_sae),
        architecture="topk",
        layer=layer_from_hook(folder.name, str(folder)),
        hook_name=folder.name,
        k=int(cfg["k"]),
        apply_b_dec_to_input=True,
        source=str(folder),
        format="sparsify",
    )
    weights = {"W_enc": w["encoder.weight"].T.contiguous(), "b_enc": w["encoder.bias"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    return _build(info, weights)


def _build(info: SAEInfo, weights: dict[str, torch.Tensor]) -> SparseAutoencoder:
    sae = SparseAutoencoder(info)
    state = {k: v.to(torch.float32) for k, v in weights.items() if k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    if info.architecture == "jumprelu" and "threshold" not in state:
        raise SAEError(f"JumpReLU SAE at {info.source} has no threshold tensor.", "Re-save it with its threshold.")
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(target.parent, target.name)
    try:
        save_file({k: v.to(dtype).contiguous() for k, v in sae.tensors().items()}, str(tmp / SAELENS_WEIGHTS))
        (tmp / CFG).write_text(json.dumps(cfg, indent=2) + "\n")
        if before_publish is not None:
            before_publish(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def discover(source: Path) -> list[SparseAutoencoder]:
    """Every SAE in `source`: a SAELens or sparsify SAE folder, or a folder of such folders."""
    if not source.exists():
        raise SAEError(f"SAE source {str(source)!r} does not exist.", "Pass a folder holding SAELens or sparsify SAEs.")
    folders = [source] + sorted(p for p in source.iterdir() if p.is_dir()) if source.is_dir() else []
    found: list[SparseAutoencoder] = []
    for f in folders:
        if (f / CFG).is_file() and (f / SAELENS_WEIGHTS).is_file():
            found.append(load_saelens(f))
        elif (f / CFG).is_file() and (f / SPARSIFY_WEIGHTS).is_file():
            found.append(load_sparsify(f))
    if not found:
        raise SAEError(
            f"No SAE found in {str(source)!r}.",
            f"Expected {CFG} + {SAELENS_WEIGHTS} (SAELens) or {CFG} + {SPARSIFY_WEIGHTS} (sparsify), "
            "in the folder or in its sub-folders (one per layer).",
        )
    return found
