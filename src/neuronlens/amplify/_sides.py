"""The two sides of an amplified generation, and the checks that they can be diffed.

A PEFT adapter on the given base keeps one model resident: the adapter is injected into the base
weights, and both sides run on that one module: in one mixed-adapter batch for LoRA
(:func:`adapter_pair`), else in two forwards, the base side's with the adapter switched off (what
peft's ``disable_adapter()`` does, at a fraction of its cost: :func:`adapter_toggle`). Any other
fine-tune (full checkpoint, or an adapter on another base) keeps both models resident for the
generation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from ..errors import ConfigError, ModelLoadError
from ..models import ModelHandle, check_fine_tune_fits
from ._decode import MixedAdapterBatch, Pair, Side, Toggle, TwoSides

_LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError)
"""What peft/transformers raise for an adapter that does not fit its base (size mismatch,
missing target modules, unreadable files)."""
STRATEGIES = ("auto", "two_forwards", "disable_adapter")
"""How a PEFT adapter on the given base runs both sides (every one gives the same answers; the
others are there to time against, benchmarks/amplify_cost.py): 'auto' one mixed-adapter batch
where peft supports it, else 'two_forwards' (the base side's forward with the adapter layers'
flags off), 'disable_adapter' two forwards with peft's own ``disable_adapter()``."""


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of what decides which ids the models read: the vocabulary, the special tokens and
    the chat template."""
    what = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "template": str(getattr(tokenizer, "chat_template", None) or ""),
    }
    return hashlib.sha256(json.dumps(what, ensure_ascii=False).encode()).hexdigest()


def check_pair(base: ModelHandle, ft: ModelHandle) -> None:
    """Refuse, before any weights load, a pair whose logits cannot be subtracted: different
    vocabularies (tokenizer or embedding rows), another architecture, or a PEFT adapter with no
    base to load or whose tensors do not fit its base (``models.check_fine_tune_fits``)."""
    if ft.kind == "peft" and ft.base is None:
        raise ModelLoadError(
            f"Adapter {ft.name!r} has no base model to load beside it.",
            "Load it with load_model(adapter, base=<its base model>) (CLI: --ft-base).",
        )
    check_fine_tune_fits(base, ft)
    bt, ftok = base.tokenizer, ft.tokenizer
    if len(bt) != len(ftok) or bt.get_vocab() != ftok.get_vocab():
        raise ModelLoadError(
            f"Amplification needs one vocabulary, but base {base.name!r} ({len(bt)} tokens) and fine-tune "
            f"{ft.name!r} ({len(ftok)} tokens) use different tokenizers.",
            "Amplify a fine-tune against the base model it was fine-tuned from (same tokenizer).",
        )
    vb, vf = _vocab_size(base), _vocab_size(ft)
    if vb is not None and vf is not None and vb != vf:
        raise ModelLoadError(
            f"Base {base.name!r} has {vb} output logits per token and fine-tune {ft.name!r} has {vf}: they cannot be subtracted.",
            "Amplify a fine-tune against the base model it was fine-tuned from (same vocabulary size).",
        )


def _vocab_size(handle: ModelHandle) -> int | None:
    cfg = handle.config
    cfg = getattr(cfg, "text_config", None) or cfg
    size = getattr(cfg, "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def shares_base(base: ModelHandle, ft: ModelHandle) -> bool:
    """Whether `ft` is a PEFT adapter on exactly `base`'s weights (one resident model)."""
    return ft.kind == "peft" and ft.base is not None and ft.base.digest == base.digest


def check_strategy(strategy: object) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy={strategy!r} is not one of {', '.join(STRATEGIES)}.", "Leave strategy='auto' (the fastest).")


@contextmanager
def model_pair(base: ModelHandle, ft: ModelHandle, strategy: str = "auto") -> Iterator[Pair]:
    """Both sides, loaded for the generation; what was not loaded before is released afterwards,
    and an adapter injected into the base weights is removed again."""
    if shares_base(base, ft) and (not ft.is_loaded or hasattr(ft.model, "disable_adapter")):
        with _adapter_model(base, ft) as model:
            yield adapter_pair(model, strategy)
        return
    with _resident(base) as base_nn, _resident(ft) as ft_nn:
        yield TwoSides(Side(ft_nn), Side(base_nn))


def module_pair(ft_model: nn.Module, base_model: nn.Module | None = None, strategy: str = "auto") -> Pair:
    """The sides of resident modules: `ft_model` against `base_model`, one forward each (both
    resident: SmolLM2-135M in float32 is 0.54 GB of weights per model); or, with no
    `base_model`, `ft_model` is a PEFT model whose base side is its adapter switched off
    (:func:`adapter_pair`: one model's memory)."""
    if base_model is None:
        return adapter_pair(ft_model, strategy)
    return TwoSides(Side(ft_model), Side(base_model))


def adapter_pair(model: Any, strategy: str = "auto") -> Pair:
    """The sides of one PEFT model: a mixed-adapter batch where peft supports it (LoRA without
    DoRA, unmerged, in eval mode), else two forwards with the adapter switched off for the base
    (`strategy`: STRATEGIES)."""
    if strategy == "auto" and supports_mixed_batch(model):
        return MixedAdapterBatch(model)
    toggle = model.disable_adapter if strategy == "disable_adapter" else adapter_toggle(model)
    return TwoSides(Side(model), Side(model, toggle=toggle))


def supports_mixed_batch(model: Any) -> bool:
    """Whether peft can run `model`'s base and adapter rows in one batch (``adapter_names``)."""
    from peft.tuners.lora import LoraLayer

    config = model.active_peft_config
    if getattr(config, "peft_type", None) != "LORA" or model.training:
        return False
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return bool(layers) and not any(m.merged or any(m.use_dora.values()) for m in layers)


def adapter_toggle(model: Any) -> Toggle:
    """A context manager that switches `model`'s adapter off (the base side's forward), as peft's
    ``disable_adapter()`` does for LoRA-like adapters: every adapter layer's disable flag set, and
    restored on exit. ``disable_adapter()`` itself also takes the model's status and resets
    requires_grad on every adapter weight: 75 ms per call against 1.3 ms for the flags (SmolLM2 with
    the demo LoRA's 210 layers, 1 thread, measured under load), paid once per generated token.
    Falls back to ``disable_adapter()`` for prompt-learning adapters, or if peft stops reading the flag."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    layers = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
    if model.active_peft_config.is_prompt_learning or not layers or not all(_flag_is_read(m) for m in layers):
        return model.disable_adapter

    @contextmanager
    def adapter_off() -> Iterator[None]:
        before = [m._disable_adapters for m in layers]
        for m in layers:
            m._disable_adapters = True
        try:
            yield
        finally:
            for m, flag in zip(layers, before):
                m._disable_adapters = flag

    return adapter_off


def _flag_is_read(module: Any) -> bool:
    """Whether `module`'s public ``disable_adapters`` property reports its ``_disable_adapters`` flag."""
    flag = getattr(module, "_disable_adapters", None)
    if not isinstance(flag, bool):
        return False
    module._disable_adapters = not flag
    try:
        return module.disable_adapters is (not flag)
    finally:
        module._disable_adapters = flag


@contextmanager
def _adapter_model(base: ModelHandle, ft: ModelHandle) -> Iterator[Any]:
    """The PEFT model: `ft`'s own when already loaded, else the adapter injected into `base`'s
    resident weights (peft's ``unload()`` restores them on exit)."""
    if ft.is_loaded:
        yield ft.model
        return
    from peft import PeftModel

    from ..models import peft_wrap_quietly

    with _resident(base) as base_nn:
        try:
            with peft_wrap_quietly():
                model = PeftModel.from_pretrained(base_nn, str(ft.path), is_trainable=False)
        except _LOAD_ERRORS as exc:
            raise _adapter_error(ft, base, exc) from exc
        model.eval()
        try:
            yield model
        finally:
            model.unload()


@contextmanager
def _resident(handle: ModelHandle) -> Iterator[nn.Module]:
    """`handle`'s model, released on exit unless it was loaded before."""
    loaded_before = handle.is_loaded
    try:
        model = handle.model
    except _LOAD_ERRORS as exc:
        if handle.kind != "peft":
            raise
        raise _adapter_error(handle, handle.base, exc) from exc
    try:
        yield model
    finally:
        del model
        if not loaded_before:
            handle.release()


def _adapter_error(ft: ModelHandle, base: ModelHandle | None, exc: BaseException) -> ModelLoadError:
    where = base.name if base is not None else "its base"
    return ModelLoadError(
        f"Adapter {ft.name!r} cannot be loaded beside its base {where!r}: {type(exc).__name__}: {exc}",
        "Pass the base model the adapter was trained from (load_model(adapter, base=...); CLI: --ft-base).",
    )
