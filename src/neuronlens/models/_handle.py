"""A model handle: where a checkpoint came from, what its bytes are, and (lazily) the model.

Resolving a source validates it and digests its files but loads no weights, so every input
problem surfaces before any long work, and `compare_models` can keep only one model resident.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._memory import release_free_memory
from ..errors import ModelLoadError
from ._aliases import ALIASES
from ._checks import (
    adapter_weights_file,
    check_adapter_fits,
    check_adapter_weights,
    check_folder_files,
    check_loading_info,
    check_model_finite,
    check_tensors_present,
    read_json_object,
)
from ._digest import Manifest, digest_paths
from ._gguf import cached_weights, discard_weights, parsed_once, store_weights
from ._layers import hidden_size, num_layers
from ._peft import peft_wrap_quietly

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_LOAD_ERRORS = (OSError, ValueError, KeyError, struct.error)
"""What reading a broken checkpoint raises (struct.error: a truncated GGUF's header or metadata)."""


@dataclass
class ModelHandle:
    """A resolved checkpoint. `model` and `tokenizer` load on first use; `release()` frees them."""

    name: str
    """Display name (the alias, hub id, folder or file name)."""
    source: str
    """What the user passed to :func:`load_model`."""
    kind: str
    """'alias', 'hub', 'folder', 'gguf' or 'peft'."""
    path: Path
    """Local folder (or .gguf file) holding the checkpoint; for 'peft' the adapter folder."""
    manifest: Manifest
    """sha256 of every file of the checkpoint (for 'peft': of the adapter's files)."""
    base: ModelHandle | None = None
    """For a PEFT adapter: the handle of the base model it applies to."""
    dtype: str = "auto"
    device: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[str, Any] | None = None
    _model: nn.Module | None = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _config: Any = field(default=None, repr=False)
    _attached: bool = field(default=False, repr=False)

    # -- identity ---------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """Manifest digest: sha256 over the per-file sha256s in sorted path order (OpenSSF)."""
        return self.manifest.digest

    @property
    def identity(self) -> dict[str, Any]:
        """What a report or certificate records about this model."""
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "revision": self.revision,
            **self.manifest.to_dict(),
        }
        if self.base is not None:
            out["base"] = self.base.identity
        return out

    # -- lazy loading -------------------------------------------------------------------------
    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def config(self) -> Any:
        """The transformers config (read without loading weights)."""
        if self._config is None:
            self._config = _load_config(self)
        return self._config

    @property
    def n_layers(self) -> int:
        if self._model is not None:
            return num_layers(self._model)
        cfg = self.config
        cfg = getattr(cfg, "text_config", None) or cfg
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(getattr(cfg, key, None), int):
                return int(getattr(cfg, key))
        return num_layers(self.model)

    @property
    def d_model(self) -> int:
        if self._model is not None:
            return hidden_size(self._model)
        cfg = self.config
        cfg = getattr(cfg, "text_config", None) or cfg
        for key in ("hidden_size", "n_embd", "d_model"):
            if isinstance(getattr(cfg, key, None), int):
                return int(getattr(cfg, key))
        return hidden_size(self.model)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = _load_tokenizer(self)
        return self._tokenizer

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            self._model = _load_weights(self)
            self._model.eval()
        return self._model

    @property
    def cacheable(self) -> bool:
        """Whether what this model computes may be cached under its digest: not when another
        model object was attached (its weights need not be the checkpoint's)."""
        return not self._attached

    @property
    def torch_device(self) -> torch.device:
        return next(self.model.parameters()).device

    def release(self) -> None:
        """Drop the loaded weights (the handle stays usable and reloads on demand)."""
        self._model = None
        self._attached = False
        if self.base is not None:
            self.base.release()
        release_free_memory()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def attach(self, model: nn.Module, tokenizer: Any | None = None) -> ModelHandle:
        """Use an already-built model object (e.g. one being trained) for this handle."""
        self._model = model
        self._attached = True
        if tokenizer is not None:
            self._tokenizer = tokenizer
        return self


# ---------------------------------------------------------------------------------------------
# devices (checked when the handle is made, before any weights load or any response is generated)
# ---------------------------------------------------------------------------------------------

_ACCELERATORS = ("cuda", "mps", "xpu")
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _accelerator_count(kind: str) -> int:
    """How many `kind` devices ('cuda', 'mps', 'xpu') this PyTorch build can use here (0: none)."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return 1 if mps is not None and mps.is_available() else 0
    xpu = getattr(torch, "xpu", None)
    return xpu.device_count() if xpu is not None and xpu.is_available() else 0


def available_devices() -> list[str]:
    """The device names this machine accepts: auto, cpu, and each usable accelerator (cuda,
    cuda:0, ...), for error messages that say what to use instead."""
    names = ["auto", "cpu"]
    for kind in _ACCELERATORS:
        n = _accelerator_count(kind)
        if n:
            names += [kind] + ([f"{kind}:{i}" for i in range(n)] if kind != "mps" else [])
    return names


def check_device(device: Any, what: str = "device") -> str:
    """`device` as a device string this machine has, or a :class:`ModelLoadError` listing the ones
    it does have. Checked when the handle is made: a typo ('tpu', 'cuda:abc') or a GPU this torch
    cannot use failed before only when the weights moved, possibly after generation started."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ModelLoadError(
            f"{what}={device!r} (type {type(device).__name__}) is not a device name.", f"Pass one of: {', '.join(available_devices())}."
        )
    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{what}={device!r} is not a device name PyTorch knows.", f"Use one of: {', '.join(available_devices())}.") from exc
    if parsed.type == "cpu":
        return device
    count = _accelerator_count(parsed.type) if parsed.type in _ACCELERATORS else 0
    if count == 0:
        raise ModelLoadError(
            f"{what}={device!r}: this machine (PyTorch {torch.__version__}) has no usable {parsed.type} device.",
            f"Use one of: {', '.join(available_devices())}.",
        )
    if parsed.index is not None and parsed.index >= count:
        raise ModelLoadError(
            f"{what}={device!r}: this machine has {count} {parsed.type} device(s), numbered from 0.",
            f"Use one of: {', '.join(available_devices())}.",
        )
    return device


def check_device_map(device_map: Any) -> None:
    """Refuse a `device_map` transformers would reject only while loading the weights (with a
    "checkpoint incomplete" fix that does not fit): a placement strategy, a dict, or a device."""
    if device_map is None or isinstance(device_map, dict) or device_map in DEVICE_MAP_STRATEGIES:
        return
    fix = (
        f"Use device_map={DEVICE_MAP_STRATEGIES[0]!r} (or {', '.join(repr(s) for s in DEVICE_MAP_STRATEGIES[1:])}), "
        "a dict {module name: device}, or one device to put the whole model on "
        f"({', '.join(d for d in available_devices() if d != 'auto')})."
    )
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        device_map = f"cuda:{device_map}"  # transformers reads an int as a GPU index
    if isinstance(device_map, (str, torch.device)):
        try:
            torch.device(device_map)
        except (RuntimeError, ValueError):
            raise ModelLoadError(f"device_map={device_map!r} is neither a placement strategy nor a device.", fix) from None
        check_device(device_map, "device_map")  # a real device name: is it on this machine?
        return
    raise ModelLoadError(f"device_map={device_map!r} (type {type(device_map).__name__}) is not a placement strategy, a dict or a device.", fix)


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


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------


def _gguf_fix(handle: ModelHandle) -> str | None:
    """The fix for a GGUF that fails to load (None for other kinds): the file, not a folder of a
    transformers checkpoint, is what to check."""
    if handle.kind not in ("alias", "gguf"):
        return None
    return (
        f"Check that {handle.path} is a complete GGUF of a causal language model whose architecture transformers "
        "can read (download it again if it may be truncated), or pass the model's transformers folder instead."
    )


def _gguf_args(handle: ModelHandle) -> tuple[str, dict[str, Any]]:
    return str(handle.path.parent), {"gguf_file": handle.path.name}


def _location(handle: ModelHandle) -> tuple[str, dict[str, Any]]:
    if handle.kind in ("alias", "gguf"):
        return _gguf_args(handle)
    return str(handle.path), {}


def _load_config(handle: ModelHandle) -> Any:
    from transformers import AutoConfig

    if handle.kind == "peft":
        assert handle.base is not None
        return handle.base.config
    where, extra = _location(handle)
    try:
        if handle.kind in ("alias", "gguf"):  # parsing a GGUF's metadata takes seconds (models/_gguf.py)
            cached = cached_weights(handle.digest)
            if cached is not None:
                return AutoConfig.from_pretrained(str(cached))
            return parsed_once("config", handle.path, handle.trust_remote_code,
                               lambda: AutoConfig.from_pretrained(where, trust_remote_code=handle.trust_remote_code, **extra))
        return AutoConfig.from_pretrained(where, trust_remote_code=handle.trust_remote_code, **extra)
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(
            f"Cannot read the model config of {handle.source!r}: {exc}",
            _gguf_fix(handle)
            or "Check that the folder is a complete transformers checkpoint (or, if the model needs custom code "
            "you trust, pass --trust-remote-code; trust_remote_code=True in Python).",
        ) from exc


def _load_tokenizer(handle: ModelHandle) -> Any:
    from transformers import AutoTokenizer

    if handle.kind == "peft":
        has_own = any((handle.path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
        if not has_own:
            assert handle.base is not None
            return handle.base.tokenizer
    where, extra = _location(handle)
    try:
        if handle.kind in ("alias", "gguf"):
            cached = cached_weights(handle.digest)
            if cached is not None and (cached / "tokenizer.json").is_file():
                tok = AutoTokenizer.from_pretrained(str(cached))
            else:
                tok = parsed_once("tokenizer", handle.path, handle.trust_remote_code,
                                  lambda: AutoTokenizer.from_pretrained(where, trust_remote_code=handle.trust_remote_code, **extra))
        else:
            tok = AutoTokenizer.from_pretrained(where, trust_remote_code=handle.trust_remote_code, **extra)
    except _LOAD_ERRORS as exc:
        raise ModelLoadError(
            f"Cannot load the tokenizer of {handle.source!r}: {exc}",
            _gguf_fix(handle) or "Make sure the tokenizer files (tokenizer.json / tokenizer_config.json) are in the checkpoint folder.",
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _torch_dtype(handle: ModelHandle, device: str) -> Any:
    if handle.dtype != "auto":
        return _DTYPES[handle.dtype]
    # On CPU, half-precision matmuls are slower than float32 and lose precision: run float32.
    return torch.float32 if device == "cpu" else "auto"


def resolved_device(handle: ModelHandle) -> str:
    if handle.device != "auto":
        return handle.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_weights(handle: ModelHandle) -> nn.Module:
    from transformers import AutoModelForCausalLM

    device = resolved_device(handle)
    if handle.kind == "peft":
        return _load_adapter(handle)
    where, extra = _location(handle)
    dtype = _torch_dtype(handle, device)
    kwargs: dict[str, Any] = dict(dtype=dtype, trust_remote_code=handle.trust_remote_code)
    gguf = handle.kind in ("alias", "gguf") and isinstance(dtype, torch.dtype)
    cached = cached_weights(handle.digest) if gguf else None
    if cached is not None:  # the GGUF dequantized once before (models/_gguf.py): a float32 checkpoint
        where, extra = str(cached), {}
    if handle.device_map is not None:
        kwargs["device_map"] = handle.device_map
        if handle.max_memory is not None:
            kwargs["max_memory"] = dict(handle.max_memory)  # transformers rewrites it in place
    if handle.kind not in ("alias", "gguf") or cached is not None:
        kwargs["use_safetensors"] = True if cached is not None else any(handle.path.glob("*.safetensors")) or None
        kwargs["weights_only"] = True
    try:
        # mismatched shapes are loaded as "ignored" so that the report below can name them
        model, info = AutoModelForCausalLM.from_pretrained(where, **kwargs, **extra, output_loading_info=True, ignore_mismatched_sizes=True)
    except (*_LOAD_ERRORS, RuntimeError) as exc:
        raise ModelLoadError(
            f"Could not load the weights of {handle.source!r}: {exc}",
            _gguf_fix(handle) or "Check that the checkpoint is complete and is a causal language model.",
        ) from exc
    if cached is not None and any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        discard_weights(handle.digest, f"does not hold every weight of the model ({ {k: v for k, v in info.items() if v} })")
        return _load_weights(handle)
    check_loading_info(info, handle.source)
    check_model_finite(model, handle.source)
    if cached is not None:  # name the model as transformers does for the GGUF (PEFT records it in adapters)
        model.config._name_or_path = _location(handle)[0]
    elif gguf and handle.device_map is None:
        store_weights(handle.digest, model, handle.tokenizer)
    if handle.device_map is None:
        model = model.to(device)
    return model


def _load_adapter(handle: ModelHandle) -> nn.Module:
    """The base model with `handle`'s PEFT adapter (checked when the handle was made)."""
    from peft import PeftModel

    assert handle.base is not None
    base_model = _load_weights(handle.base)
    try:
        with peft_wrap_quietly():  # peft reads transformers' deprecated is_gradient_checkpointing
            return PeftModel.from_pretrained(base_model, str(handle.path), is_trainable=False)
    except (*_LOAD_ERRORS, RuntimeError) as exc:
        raise ModelLoadError(
            f"Could not apply the adapter {handle.source!r} to its base {handle.base.source!r}: {exc}",
            "Pass the base model this adapter was trained on (--ft-base on the CLI, base=... in Python), or save the adapter again.",
        ) from exc
