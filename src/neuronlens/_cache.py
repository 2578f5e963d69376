"""A small on-disk cache for things that are slow to rebuild (generated responses, trained
SAEs, base-model statistics). Entries are keyed by a digest of everything they depend on, are
written atomically, and carry a checksum: a corrupt entry or one from another format version is
rebuilt, never trusted. The checksum catches corruption, not tampering (whoever edits an entry can
recompute it); what an audit read from the cache is recorded instead: the report and certificate
hold the sha256 of the responses each read used (``neuronlens.probes.responses_sha256``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from ._io import write_json_atomic

CACHE_FORMAT = 1


def cache_root() -> Path:
    """``$NEURONLENS_CACHE``, else ``$XDG_CACHE_HOME/neuronlens``, else ``~/.cache/neuronlens``."""
    env = os.environ.get("NEURONLENS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "neuronlens"


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def entry_path(kind: str, key: dict[str, Any], suffix: str) -> Path:
    """Where the entry of `kind` for `key` lives."""
    return cache_root() / kind / f"{key_digest(key)}{suffix}"


def discard_entry(path: Path, why: str = "is corrupt or stale") -> None:
    """Warn that the entry at `path` (a file, or a folder entry) cannot be trusted and remove it
    (it is rebuilt)."""
    warnings.warn(f"NeuronLens cache entry {path} {why}; rebuilding it.", stacklevel=3)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _payload_sum(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_json_entry(kind: str, key: dict[str, Any]) -> Any | None:
    """The cached payload for `key`, or None when absent, corrupt or stale (then it is removed)."""
    path = entry_path(kind, key, ".json")
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
        ok = entry.get("format") == CACHE_FORMAT and entry.get("key") == json.loads(json.dumps(key, default=str))
        ok = ok and entry.get("sha256") == _payload_sum(entry.get("payload"))
    except (OSError, ValueError, AttributeError):  # ValueError: not JSON, or not UTF-8
        ok = False
    if not ok:
        discard_entry(path)
        return None
    return entry["payload"]


def store_json_entry(kind: str, key: dict[str, Any], payload: Any) -> Path | None:
    """Store `payload`; a cache that cannot be written is skipped with a warning, not an error."""
    path = entry_path(kind, key, ".json")
    entry = {"format": CACHE_FORMAT, "key": key, "sha256": _payload_sum(payload), "payload": payload}
    try:
        return write_json_atomic(path, json.loads(json.dumps(entry, default=str)), indent=None)
    except OSError as exc:
        warnings.warn(f"Could not write the NeuronLens cache at {path}: {exc}", stacklevel=2)
        return None


def _tensors_sum(tensors: dict[str, Any]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_tensor_file(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The tensors of the checked safetensors file at `path` (its metadata holds `key`, the format
    version and a sha256 of the tensors), or None when absent, corrupt or stale. Removes nothing:
    the caller decides whether the file is its own to discard."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:  # metadata and tensors in one read of the file
            meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
        ok = meta.get("format") == str(CACHE_FORMAT) and json.loads(meta.get("key", "null")) == json.loads(json.dumps(key, default=str))
        ok = ok and meta.get("sha256") == _tensors_sum(tensors)
    except (OSError, SafetensorError, ValueError, RuntimeError):
        ok = False
    return tensors if ok else None


def write_tensor_file(path: Path, key: dict[str, Any], tensors: dict[str, Any]) -> Path | None:
    """Write `tensors` atomically to `path` with `key`, the format version and their sha256 in the
    metadata; a cache that cannot be written is skipped with a warning."""
    from safetensors.torch import save_file

    from ._io import write_with_atomic

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": str(CACHE_FORMAT), "key": json.dumps(key, sort_keys=True, default=str), "sha256": _tensors_sum(tensors)}
    try:
        return write_with_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    except OSError as exc:
        warnings.warn(f"Could not write the NeuronLens cache at {path}: {exc}", stacklevel=2)
        return None


def load_tensor_entry(kind: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached tensors for `key`, or None when absent, corrupt or stale (then removed)."""
    path = entry_path(kind, key, ".safetensors")
    if not path.is_file():
        return None
    tensors = read_tensor_file(path, key)
    if tensors is None:
        discard_entry(path)
    return tensors


def store_tensor_entry(kind: str, key: dict[str, Any], tensors: dict[str, Any]) -> Path | None:
    """Store `tensors` atomically; a cache that cannot be written is skipped with a warning."""
    return write_tensor_file(entry_path(kind, key, ".safetensors"), key, tensors)
