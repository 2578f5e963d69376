"""Stage 1 of the audit: resolve, digest and (lazily) load checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._aliases import ALIASES, DEFAULT_BASE
from ._checks import check_fine_tune_fits
from ._digest import FileDigest, Manifest, digest_paths, manifest_digest, sha256_file
from ._handle import ModelHandle, resolved_device
from ._kv import cache_argument, returned_cache
from ._layers import decoder_layers, hidden_size, num_layers, unwrap_peft
from ._lora import MERGE_MIN_ROWS, fused_lora
from ._peft import peft_wrap_quietly
from ._resolve import resolve

__all__ = [
    "ALIASES",
    "DEFAULT_BASE",
    "MERGE_MIN_ROWS",
    "FileDigest",
    "Manifest",
    "ModelHandle",
    "cache_argument",
    "check_fine_tune_fits",
    "decoder_layers",
    "fused_lora",
    "digest_paths",
    "hidden_size",
    "load_model",
    "manifest_digest",
    "num_layers",
    "peft_wrap_quietly",
    "resolved_device",
    "returned_cache",
    "sha256_file",
    "unwrap_peft",
]


def load_model(
    source: str | Path,
    *,
    dtype: str = "auto",
    device: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    base: str | Path | ModelHandle | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[str, Any] | None = None,
    lazy: bool = True,
) -> ModelHandle:
    """Resolve a checkpoint into a :class:`ModelHandle`.

    `source` is a Hugging Face hub id, a local folder of safetensors, a ``.gguf`` file, a PEFT
    adapter folder (its base comes from ``adapter_config.json`` unless `base` is given), or a
    built-in alias such as ``smollm2-135m-instruct``. All files are sha256-digested now; weights
    load on first use unless ``lazy=False``. ``trust_remote_code`` stays off unless you ask.
    """
    handle = resolve(
        source,
        dtype=dtype,
        device=device,
        revision=revision,
        trust_remote_code=trust_remote_code,
        base=base,
        device_map=device_map,
        max_memory=max_memory,
    )
    if not lazy:
        handle.model  # noqa: B018 - force the load
    return handle
