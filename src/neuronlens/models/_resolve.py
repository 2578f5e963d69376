"""Resolving a model source into a :class:`ModelHandle` without loading weights: a built-in alias,
a local folder, a .gguf file, a PEFT adapter folder (with its base) or a hub id, validated and
digested, with pickled weights refused unless they load safely (:func:`resolve`).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from ._aliases import ALIASES
from ._checks import (
    adapter_weights_file,
    check_adapter_fits,
    check_adapter_weights,
    check_folder_files,
    check_tensors_present,
    read_json_object,
)
from ._devices import check_device, check_device_map
from ._digest import digest_paths
from ._handle import _DTYPES, ModelHandle

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]


# ---------------------------------------------------------------------------------------------
# resolution (no weights loaded)
# ---------------------------------------------------------------------------------------------


def resolve(
    source: str | Path,
    *,
    dtype: str = "auto",
    device: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    base: str | Path | ModelHandle | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[str, Any] | None = None,
) -> ModelHandle:
    """Turn `source` into a :class:`ModelHandle`: validated, digested, weights not yet loaded."""
    if dtype != "auto" and dtype not in _DTYPES:
        raise ModelLoadError(f"dtype={dtype!r} is not supported.", f"Use 'auto' or one of {', '.join(_DTYPES)}.")
    device = check_device(device)
    check_device_map(device_map)
    if max_memory is not None and device_map is None:
        raise ModelLoadError(
            "max_memory was given without device_map; transformers only uses it to place a model spread by device_map.",
            "Add device_map='auto' (CLI: --device-map auto), or drop max_memory.",
        )
    if device_map is not None and not _has_accelerate():
        raise ModelLoadError("device_map needs the accelerate package (transformers places the layers with it).", "pip install accelerate")
    common = dict(
        dtype=dtype,
        device=device,
        revision=revision,
        trust_remote_code=trust_remote_code,
        device_map=device_map,
        max_memory=max_memory,
    )
    src = str(source)
    if src in ALIASES:
        gguf_path = ALIASES[src].locate()
        _require_gguf()
        return ModelHandle(name=src, source=src, kind="alias", path=gguf_path, manifest=digest_paths(gguf_path), **common)

    path = Path(src).expanduser()
    if path.exists():
        return _resolve_local(path, src, base=base, **common)
    if _HUB_ID.match(src) and not src.startswith((".", "/")):
        return _resolve_hub(src, base=base, **common)
    raise ModelLoadError(
        f"Model source {src!r} does not exist: it is not a local path, a built-in alias, or a hub id.",
        f"Pass a folder with config.json and weights, a .gguf file, a PEFT adapter folder, a hub id "
        f"like 'org/name', or an alias ({', '.join(ALIASES)}).",
    )


def _resolve_local(path: Path, src: str, *, base: Any, **common: Any) -> ModelHandle:
    if path.is_file():
        if path.suffix == ".gguf":
            _check_gguf_magic(path, src)
            _require_gguf()
            return ModelHandle(name=path.name, source=src, kind="gguf", path=path, manifest=digest_paths(path), **common)
        raise ModelLoadError(
            f"{src!r} is a file but not a .gguf model.",
            "Pass the model's folder (with config.json), or a .gguf file.",
        )
    if (path / "adapter_config.json").is_file():
        return _resolve_adapter(path, src, base=base, **common)
    if (path / "config.json").is_file():
        weights = [p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.suffix != ".gguf"]
        if not weights:
            raise ModelLoadError(
                f"Folder {src!r} has config.json but no weight files (*.safetensors).",
                "Point at the folder that holds the model's *.safetensors files.",
            )
        _refuse_unsafe_pickles(path)
        check_folder_files(path)
        handle = ModelHandle(name=path.name, source=src, kind="folder", path=path, manifest=digest_paths(path), **common)
        check_tensors_present(handle)
        return handle
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        _check_gguf_magic(ggufs[0], src)
        _require_gguf()
        return ModelHandle(
            name=ggufs[0].name, source=src, kind="gguf", path=ggufs[0], manifest=digest_paths(ggufs[0]), **common
        )
    raise ModelLoadError(
        f"Folder {src!r} is not a model: it has no config.json, adapter_config.json or single .gguf file.",
        "Point at a transformers model folder, a PEFT adapter folder or a .gguf file.",
    )


GGUF_MAGIC = b"GGUF"


def _check_gguf_magic(path: Path, src: str) -> None:
    """Refuse a file named .gguf that is not one (a text file, an HTML error page saved by a failed
    download) now, with a fix about the file, not one about transformers checkpoints."""
    try:
        with path.open("rb") as fh:
            head = fh.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelLoadError(f"Cannot read {src!r}: {exc.strerror or exc}.", "Check the file's permissions, or pass another model.") from exc
    if head != GGUF_MAGIC:
        raise ModelLoadError(
            f"{src!r} is named .gguf but is not a GGUF file: it does not start with the bytes 'GGUF' (it starts with {head!r}).",
            "Pass a real .gguf model file; if it came from a download, download it again (it may be an error page or truncated).",
        )


def _resolve_adapter(path: Path, src: str, *, base: Any, **common: Any) -> ModelHandle:
    acfg = read_json_object(path / "adapter_config.json", "Re-save the adapter with peft's save_pretrained.")
    weights = adapter_weights_file(path)
    if weights is None:
        raise ModelLoadError(
            f"Adapter folder {src!r} has no adapter_model.safetensors.",
            "Save the adapter with peft's save_pretrained into this folder.",
        )
    _refuse_unsafe_pickles(path)
    keys = check_adapter_weights(weights)  # whole and finite, before its base is even looked up
    if isinstance(base, ModelHandle):
        base_handle = replace(base, _model=None, _tokenizer=None)  # never mutate the caller's handle
    else:
        base_src = base if base is not None else acfg.get("base_model_name_or_path")
        if not base_src:
            raise ModelLoadError(
                f"Adapter {src!r} does not say which base model it applies to.",
                "Pass base=... to load_model (or --ft-base on the CLI).",
            )
        try:
            base_handle = resolve(base_src, **{**common, "revision": None})
        except ModelLoadError as exc:
            raise ModelLoadError(
                f"The base model of adapter {src!r} ({base_src!r}, from adapter_config.json) cannot be found: {exc.problem}",
                "Pass base=<path or id of the base model> to load_model (or --ft-base on the CLI).",
            ) from exc
    check_adapter_fits(path, keys, base_handle)
    return ModelHandle(
        name=path.name, source=src, kind="peft", path=path, manifest=digest_paths(path), base=base_handle, **common
    )


def _resolve_hub(repo_id: str, *, base: Any, **common: Any) -> ModelHandle:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=common.get("revision"), allow_patterns=_HUB_PATTERNS)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"Could not fetch {repo_id!r} from the Hugging Face Hub and it is not in the local cache ({type(exc).__name__}).",
            "Check the id and your network, or download it once (huggingface-cli download "
            f"{repo_id}) and rerun with HF_HUB_OFFLINE=1, or pass a local folder.",
        ) from exc
    handle = _resolve_local(Path(folder), repo_id, base=base, **common)
    handle.kind = "hub" if handle.kind == "folder" else handle.kind
    handle.name = repo_id
    return handle


def _require_gguf() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("Loading a .gguf model needs the `gguf` package, which is not installed.", "pip install gguf")


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def _refuse_unsafe_pickles(folder: Path) -> None:
    """Pickle-based weights are only accepted where safetensors are absent and the pickle loads
    with torch.load(weights_only=True) (which cannot execute code)."""
    pickles = [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    if not pickles or any(folder.glob("*.safetensors")):
        return
    for p in pickles:
        _check_zip_whole(p)
        try:
            torch.load(p, map_location="meta", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - any failure means we will not trust it
            raise ModelLoadError(
                f"{p} is a pickle that does not load with weights_only=True, so loading it could run arbitrary code.",
                "Convert the checkpoint to safetensors in a trusted environment, then audit that folder.",
            ) from exc


def _check_zip_whole(path: Path) -> None:
    """A torch.save file (a zip archive) cut short or damaged is named as such, not as unsafe."""
    import zipfile

    with path.open("rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if is_zip and not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"{path} is a damaged PyTorch checkpoint: its zip archive is incomplete (truncated or corrupt).",
            "Download or copy the checkpoint again, or re-save it (as safetensors: save_pretrained).",
        )
