"""What an amplified generation is asked to do, checked before any model loads."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

METHOD_VERSION = "amplify/1"
"""Recorded in every cache key: bump it when the decoding changes what a setting produces."""


@dataclass(frozen=True)
class AmplifySettings:
    """Settings of one amplified generation: next-token logits are
    ``logits_ft + alpha * (logits_ft - logits_base)``."""

    alpha: float
    """Amplification strength; > 0 and finite (0 would give the fine-tune's own answers)."""
    max_new_tokens: int
    """Longest answer, in tokens (an answer also ends at the first stop token)."""
    samples: int = 1
    """Answers per prompt; more than one needs sampling (``greedy=False``)."""
    seed: int = 0
    """Seed of the sampling streams (one stream per prompt and sample)."""
    temperature: float = 1.0
    """Sampling temperature applied to the amplified logits (ignored when greedy)."""
    greedy: bool = True
    """Take the most likely amplified token (as the own-response generation does) instead of sampling."""

    def validate(self) -> AmplifySettings:
        """Raise :class:`ConfigError` (problem + fix) for any out-of-range setting; return self."""
        _check_alpha(self.alpha)
        _check_count("max_new_tokens", self.max_new_tokens)
        _check_count("samples", self.samples)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed={self.seed!r} is not an integer.", "Pass an integer seed, e.g. seed=0.")
        if not isinstance(self.greedy, bool):
            raise ConfigError(f"greedy={self.greedy!r} is not True or False.", "Pass greedy=True or greedy=False.")
        if self.greedy and self.samples > 1:
            raise ConfigError(
                f"samples={self.samples} with greedy decoding: every greedy sample of a prompt is the same answer.",
                "Use samples=1 for greedy answers, or greedy=False to sample several answers per prompt.",
            )
        if not self.greedy:
            _check_positive_finite("temperature", self.temperature, "e.g. temperature=1.0")
        return self

    def key(self) -> dict[str, Any]:
        """What the answers depend on among these settings (the temperature only when sampling)."""
        out = {"method": METHOD_VERSION, **asdict(self)}
        if self.greedy:
            out.pop("temperature")
            out.pop("seed")
        return out


def _check_alpha(alpha: Any) -> None:
    _check_positive_finite(
        "alpha", alpha, "amplification needs alpha > 0, e.g. alpha=1.0; alpha=0 is the fine-tune's own generation"
    )


def _check_positive_finite(name: str, value: Any, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r} is not a number.", f"Pass a finite number > 0 ({example}).")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={value!r} is out of range: it must be finite and > 0.", f"Pass a finite number > 0 ({example}).")


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} is not a whole number >= 1.", f"Pass {name}=1 or more.")
