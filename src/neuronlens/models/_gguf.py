"""GGUF checkpoints without paying for the GGUF file twice.

transformers reads a GGUF by parsing all of its metadata (a 49k-token vocabulary included) for the
config, again for the tokenizer and again for the weights, and dequantizes every tensor for the
weights. For SmolLM2-135M-Instruct on 2 cores that is 3.6 s (config), 2.6 s (tokenizer) and
10.5 s (weights), and an audit of the demo pair reads the same GGUF twice: as the base model and
as the base of its LoRA fine-tune. So

- the dequantized float32 weights are cached as a transformers checkpoint (config.json,
  model.safetensors and the tokenizer's files) under the NeuronLens cache, keyed by the GGUF's
  sha256 and the transformers and torch versions, with the sha256 of every file recorded beside
  them and checked before use (once per process while the files are unchanged): an entry that
  does not match is removed and rebuilt, never loaded. Loading from it takes 0.4 s (weights) and
  0.1 s (tokenizer); the reloaded tokenizer was checked to give the GGUF tokenizer's ids on every
  probe prompt and concept text and the same chat template;
- until that entry exists, the config and the tokenizer are parsed once per process and per file
  (size and modification time included), and every handle gets its own deep copy.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._cache import CACHE_FORMAT, discard_entry, entry_path
from .._io import publish_dir
from ._digest import sha256_file

KIND = "gguf-weights"
_ENTRY = "neuronlens-entry.json"
_PARSED: dict[tuple[Any, ...], Any] = {}
_VERIFIED: dict[Path, tuple[Any, ...]] = {}


def parsed_once(what: str, path: Path, trust_remote_code: bool, load: Callable[[], Any]) -> Any:
    """A deep copy of `load()`'s result, which runs once per process for this file's current bytes
    (path, size, modification time) and `what` ('config' or 'tokenizer')."""
    st = path.stat()
    key = (what, str(path.resolve()), st.st_size, st.st_mtime_ns, trust_remote_code)
    if key not in _PARSED:
        _PARSED[key] = load()
    return copy.deepcopy(_PARSED[key])


def weights_key(gguf_digest: str) -> dict[str, Any]:
    import transformers

    return {"gguf": gguf_digest, "transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}


def _entry(gguf_digest: str) -> tuple[Path, dict[str, Any]]:
    """Where this GGUF's dequantized checkpoint lives, and the key it is checked against."""
    key = weights_key(gguf_digest)
    return entry_path(KIND, key, ""), key


def cached_weights(gguf_digest: str) -> Path | None:
    """The folder of the checked dequantized checkpoint for this GGUF, or None (a folder that fails
    its check is removed with a warning)."""
    folder, key = _entry(gguf_digest)
    if not folder.is_dir():
        return None
    if _check(folder, key):
        return folder
    discard_weights(gguf_digest, "is corrupt or stale")
    return None


def discard_weights(gguf_digest: str, why: str) -> None:
    """Remove this GGUF's cached checkpoint with a warning saying why (it is rebuilt)."""
    folder, _ = _entry(gguf_digest)
    discard_entry(folder, why)
    _VERIFIED.pop(folder, None)


def store_weights(gguf_digest: str, model: torch.nn.Module, tokenizer: Any = None) -> Path | None:
    """Save `model` (float32, freshly dequantized from the GGUF) and `tokenizer` as the cached
    checkpoint for it, atomically: written in a temporary folder beside the entry, then renamed
    into place. Models in another dtype are not stored (the entry must hold exactly what the GGUF
    dequantizes to)."""
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return None
    folder, key = _entry(gguf_digest)
    try:
        # an entry another process (a data-parallel rank) stored first is kept; a bad one replaced
        with publish_dir(folder, keep=lambda existing: _check(existing, key)) as staged:
            tmp = staged.path
            _save_checkpoint(model, tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / _ENTRY).write_text(json.dumps({"format": CACHE_FORMAT, "key": key, "files": files}, indent=1))
    except Exception as exc:  # noqa: BLE001 - the cache only saves time: never fail a load for it
        if folder.is_dir() and _check(folder, key):  # lost a race with another process's rename
            return folder
        warnings.warn(f"Could not write the NeuronLens cache at {folder}: {type(exc).__name__}: {exc}", stacklevel=2)
        return None
    return folder


def _save_checkpoint(model: torch.nn.Module, folder: Path) -> None:
    """config.json + model.safetensors. transformers refuses `save_pretrained` on a model it loaded
    from a GGUF (it counts as quantized), so the state dict is written directly: a tensor that is
    the very same view as an earlier one (the LM head tied to the input embedding) is left out, and
    `from_pretrained` ties it again from the config; a different view of shared storage is copied.
    A load from the entry that misses or mismatches any weight is refused (see `_handle`)."""
    from safetensors.torch import save_file

    config = copy.deepcopy(model.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.save_pretrained(folder)
    tensors, views, storages = {}, set(), set()
    for name, t in model.state_dict().items():
        view = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if view in views:
            continue
        views.add(view)
        storage = t.untyped_storage().data_ptr()
        tensors[name] = t.detach().cpu().clone() if storage in storages else t.detach().cpu().contiguous()
        storages.add(storage)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _check(folder: Path, key: dict[str, Any]) -> bool:
    try:
        signature = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()))
    except OSError:
        return False
    if _VERIFIED.get(folder) == signature:
        return True
    ok = _hashes_match(folder, key)
    if ok:
        _VERIFIED[folder] = signature
    return ok


def _hashes_match(folder: Path, key: dict[str, Any]) -> bool:
    try:
        entry = json.loads((folder / _ENTRY).read_text())
        if entry.get("format") != CACHE_FORMAT or entry.get("key") != key:
            return False
        files = entry.get("files") or {}
        present = {p.name for p in folder.iterdir() if p.is_file() and p.name != _ENTRY}
        return bool(files) and present == set(files) and all(sha256_file(folder / n) == s for n, s in files.items())
    except (OSError, ValueError, AttributeError):
        return False


__all__ = ["cached_weights", "discard_weights", "parsed_once", "store_weights", "weights_key"]
