"""A model handle: where a checkpoint came from, what its bytes are, and (lazily) the model.

Resolving a source validates it and digests its files but loads no weights, so every input
problem surfaces before any long work, and `compare_models` can keep only one model resident.
This module holds the handle and the lazy loading of its config, tokenizer and weights; resolving
a source is in _resolve.py, checking its device in _devices.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._memory import release_free_memory
from ..errors import ModelLoadError
from ._checks import check_loading_info, check_model_finite
from ._digest import Manifest
from ._gguf import cached_weights, discard_weights, parsed_once, store_weights
from ._layers import hidden_size, num_layers
from ._peft import peft_wrap_quietly

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
