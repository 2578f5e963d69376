"""Settings an SAE states about its *input* that decide whether NeuronLens can feed it.

Activation normalisation (sae-lens's ``normalize_activations``):

- ``"none"`` (also ``false``/``null`` in pre-6.0 configs, which sae-lens reads as "none").
- ``"expected_average_only_in"``: the input is multiplied by one dataset-wide factor
  (``sqrt(d_in) / average norm``). A constant scale is linear, so it is folded into the weights
  exactly as sae-lens's ``fold_activation_norm_scaling_factor`` does (W_enc * f, W_dec / f,
  b_dec / f); the factor comes from sae-lens's registry (release loads) or the family's own files
  (Llama Scope's ``hyperparams.json``). A bare folder that states the mode without a factor is
  refused: sae-lens itself then applies no scaling at all.
- ``"layer_norm"``, ``"constant_norm_rescale"``: each vector is rescaled by its *own* norm (and
  mean) and the reconstruction scaled back by the same per-vector numbers. That is not linear, so
  it cannot be folded into weights, and a decoder that sees only the latents cannot undo it.
- ``"covariance_whitening"``: needs the whitening statistics, which are not in the SAE's files.

TransformerLens weight processing (``model_from_pretrained_kwargs`` in sae-lens's registry or a
cfg.json): ``center_writing_weights`` makes every residual vector mean-free across d_model, so
an SAE trained on it reads a different vector than the Hugging Face residual NeuronLens hooks.
Folding LayerNorm (``fold_ln``) or value biases does not change the residual stream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import SAEError
from ._sae import SparseAutoencoder

FOLDABLE = "expected_average_only_in"
_PER_VECTOR = ("layer_norm", "constant_norm_rescale")
_KNOWN = ("none", FOLDABLE, *_PER_VECTOR, "covariance_whitening")
_RESIDUAL_CHANGING = ("center_writing_weights",)


def norm_mode(value: Any) -> str:
    """sae-lens's reading of ``normalize_activations``: booleans as pre-6.0 configs wrote them
    (false = "none", true = "expected_average_only_in"), null as "none"."""
    if value is None or value is False:
        return "none"
    if value is True:
        return FOLDABLE
    return str(value)


def input_scale(value: Any, where: str, factor: float | None) -> float | None:
    """The constant input scale to fold into an SAE whose config states ``normalize_activations``
    = `value` (None when there is none); an SAEError for a mode NeuronLens cannot reproduce."""
    mode = norm_mode(value)
    if mode == "none":
        return None
    if mode == FOLDABLE:
        if factor is None:
            raise SAEError(
                f"SAE at {where} expects normalize_activations='{FOLDABLE}' but states no scaling factor, "
                "so its input scale is unknown (sae-lens itself then applies none).",
                "Fold the factor into the weights first (sae-lens: sae.fold_activation_norm_scaling_factor(f), then "
                "save_model), or load it by release name (--sae RELEASE:SAE_ID), whose registry entry records the factor.",
            )
        if isinstance(factor, bool) or not (isinstance(factor, (int, float)) and 0 < factor < math.inf):
            raise SAEError(f"SAE at {where} has norm_scaling_factor {factor!r}; it must be a positive number.",
                           "Correct the factor (sqrt(d_in) / the dataset's average activation norm).")
        return float(factor)
    if mode in _PER_VECTOR:
        raise SAEError(
            f"SAE at {where} uses normalize_activations='{mode}': it rescales each activation by that vector's own "
            "norm and scales the reconstruction back, which cannot be folded into the weights and which NeuronLens does not do.",
            "Use an SAE trained without per-vector normalisation (normalize_activations 'none' or "
            f"'{FOLDABLE}').",
        )
    what = "needs whitening statistics that are not in its files" if mode in _KNOWN else "is not a mode sae-lens knows"
    raise SAEError(f"SAE at {where} uses normalize_activations={mode!r}, which {what}.",
                   "Fold the normalisation into the weights with sae-lens first (e.g. fold_activation_whitening), then save it.")


@torch.no_grad()
def fold_input_scale(sae: SparseAutoencoder, factor: float) -> SparseAutoencoder:
    """sae-lens's ``fold_activation_norm_scaling_factor``: W_enc * f, W_dec / f, b_dec / f (b_enc
    and any threshold unchanged), so raw activations encode as the scaled ones did."""
    sae.W_enc.mul_(factor)
    sae.W_dec.div_(factor)
    sae.b_dec.div_(factor)
    return sae


def check_processing(kwargs: Any, where: str) -> None:
    """An SAEError when `kwargs` (``model_from_pretrained_kwargs``) asks for TransformerLens weight
    processing that changes the residual stream itself."""
    if not isinstance(kwargs, Mapping):
        return
    wanted = [name for name in _RESIDUAL_CHANGING if kwargs.get(name)]
    if wanted:
        raise SAEError(
            f"SAE at {where} was trained on TransformerLens activations with {', '.join(f'{n}=True' for n in wanted)}: "
            "its residual vectors are mean-centred across d_model, unlike the Hugging Face residual stream NeuronLens reads.",
            "Use an SAE trained on unprocessed activations (sae-lens: from_pretrained_no_processing), e.g. another release.",
        )
