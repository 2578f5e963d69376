"""The base model's residuals on the probe tokens, cached across audits of one base.

Auditing several fine-tunes of one base model repeats the base half of the audit. Responses,
SAEs and concept associations have caches of their own; this one holds the base pass's output:
the residual-stream rows at the audited layers for every measured token (float32, as
:func:`~neuronlens.capture.gather` returns them). Everything computed from them - SAE codes,
massive-activation masks, the base side of the 'own' read - is recomputed on a hit (the SAE
encode costs about a tenth of a forward), so the entry does not depend on the SAEs, the
concepts or the statistics settings, and cannot go stale when those change.

The key holds what the residuals depend on: the base checkpoint's manifest digest, dtype and
device, the torch and transformers versions, the audited layers, and a digest of every batch's
tokens and measured positions (which covers the probe prompts, the base responses, `positions`,
`token_budget` and the pad token), plus the data-parallel shard. An entry that fails its checksum
or does not hold the expected tensors is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch

from ._version import __version__
from ._cache import discard_entry, entry_path, load_tensor_entry, store_tensor_entry

if TYPE_CHECKING:
    from ._distributed import DataParallel
    from .capture import Batch
    from .models import ModelHandle

KIND = "base_pass"


def base_pass_key(base: ModelHandle, batches: list[Batch], layers: list[int], parallel: DataParallel | None) -> dict[str, Any]:
    import transformers

    h = hashlib.sha256()
    for b in batches:
        for t in (b.input_ids, b.attention_mask, b.row, b.col):
            t = t.detach().cpu().to(torch.int64).contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
    return {
        "model": base.digest,
        "dtype": base.dtype,
        "device": base.device,
        "device_map": base.device_map,
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "neuronlens": __version__,
        "layers": list(layers),
        "tokens": h.hexdigest(),
        "shard": list(parallel.spec) if parallel is not None else None,
    }


def _name(batch: int, layer: int) -> str:
    return f"b{batch}.L{layer}"


def load_base_residuals(key: dict[str, Any], n_batches: int, layers: list[int]) -> list[dict[int, torch.Tensor]] | None:
    """The cached residuals (one dict layer -> [n_tokens, d_model] per batch), or None."""
    tensors = load_tensor_entry(KIND, key)
    if tensors is None:
        return None
    expected = {_name(i, la) for i in range(n_batches) for la in layers}
    if set(tensors) != expected:
        discard_entry(entry_path(KIND, key, ".safetensors"), "does not hold this audit's batches")
        return None
    return [{la: tensors[_name(i, la)] for la in layers} for i in range(n_batches)]


def store_base_residuals(key: dict[str, Any], resid: list[dict[int, torch.Tensor]]) -> None:
    store_tensor_entry(KIND, key, {_name(i, la): x for i, per_layer in enumerate(resid) for la, x in per_layer.items()})


__all__ = ["base_pass_key", "load_base_residuals", "store_base_residuals"]
