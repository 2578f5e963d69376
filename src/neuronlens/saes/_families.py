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

:class:`Family` and :class:`Registered` are defined in _layout.py, the readers of the last three
families in _converted.py; this module holds the SAELens and sparsify entries, the registry and
the finding and choosing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SAEError
from ._converted import (
    GEMMA2_CFG,
    GEMMA2_WEIGHTS,
    GEMMA_NPZ,
    LLAMA_CFG,
    LLAMA_WEIGHTS,
    _gemma_scope_2_hook,
    _gemma_scope_hook,
    _llama_scope_hook,
    _read_gemma_scope,
    _read_gemma_scope_2,
    _read_llama_scope,
)
from ._formats import CFG, SAELENS_WEIGHTS, SPARSIFY_WEIGHTS, _read_cfg, layer_from_hook, load_saelens, load_sparsify
from ._layout import NOTHING, Family, Registered, check_registered
from ._sae import SparseAutoencoder


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


def _read_sparsify(folder: Path, reg: Registered) -> SparseAutoencoder:
    return load_sparsify(folder)


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
