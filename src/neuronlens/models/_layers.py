"""Find the decoder blocks of a Hugging Face causal LM, whatever its architecture.

Known layouts are tried first (Llama/Mistral/Qwen2/Gemma/Phi-3: ``model.layers``; GPT-2:
``transformer.h``; GPT-NeoX: ``gpt_neox.layers``; Phi-1/2: ``model.layers``); otherwise the
ModuleList of identical blocks whose length equals ``config.num_hidden_layers`` is taken.
"""

from __future__ import annotations

from torch import nn

from ..errors import ModelLoadError

_KNOWN_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers")


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (PeftModel.base_model (LoraModel).model), or
    `model` itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _get_path(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
        if module is None:
            return None
    return module


def num_layers(model: nn.Module) -> int:
    cfg = unwrap_peft(model).config
    cfg = getattr(cfg, "text_config", None) or cfg
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(cfg, key, None), int):
            return int(getattr(cfg, key))
    return len(decoder_layers(model))


def hidden_size(model: nn.Module) -> int:
    cfg = unwrap_peft(model).config
    cfg = getattr(cfg, "text_config", None) or cfg
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(cfg, key, None), int):
            return int(getattr(cfg, key))
    raise ModelLoadError(f"Cannot tell the hidden size of {type(model).__name__}.", "Use a standard transformers causal LM.")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder blocks; layer L's output is the residual stream after block L."""
    inner = unwrap_peft(model)
    for path in _KNOWN_PATHS:
        found = _get_path(inner, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    cfg = getattr(inner, "config", None)
    want = getattr(getattr(cfg, "text_config", None) or cfg, "num_hidden_layers", None)
    candidates = [
        m
        for m in inner.modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1 and (want is None or len(m) == want)
    ]
    if not candidates:
        raise ModelLoadError(
            f"Could not find the decoder blocks of {type(inner).__name__}.",
            "NeuronLens supports transformers causal LMs whose blocks sit in one ModuleList "
            "(Llama, Mistral, Qwen2, Gemma, GPT-2, GPT-NeoX, Phi); open an issue with the model's class name.",
        )
    return max(candidates, key=len)
