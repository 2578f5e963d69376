"""The KV cache's name in a causal LM's forward, across transformers versions: 5.25 renamed the
forward's ``past_key_values`` argument (and output) to ``cache``, keeping the old name as a
deprecated alias. Amplified generation and the preference read's shared prefix both pass one."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ._layers import unwrap_peft


def cache_argument(model: nn.Module) -> str | None:
    """The forward's keyword for a KV cache (`cache` or `past_key_values`; a PEFT wrapper's is its
    model's), or None when it takes none."""
    params = inspect.signature(unwrap_peft(model).forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def returned_cache(out: Any) -> Any:
    """The KV cache a forward returned (under either name), or None."""
    cache = out.get("cache", None)
    return out.get("past_key_values", None) if cache is None else cache
