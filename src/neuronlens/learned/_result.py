"""What the Activation Difference Lens found: typed, immutable, JSON-ready, and as a few lines of text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._lens import TokenScore
from ._sums import DifferenceSums

_SHOWN_TOKENS = 8
_SHOWN_CHARS = 160


@dataclass(frozen=True)
class Steering:
    """Samples of the base model with the pooled difference added after the lens layer."""

    factor: float
    """Multiple of the base model's typical residual norm at the layer."""
    strength: float
    """Norm of the added vector (factor x typical norm)."""
    temperature: float
    seed: int
    prompts: tuple[str, ...]
    steered: tuple[str, ...]
    unsteered: tuple[str, ...]
    """The base model's own answers to the same prompts with the same seed, for contrast."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor, "strength": self.strength, "temperature": self.temperature, "seed": self.seed,
            "samples": [{"prompt": p, "steered": s, "unsteered": u} for p, s, u in zip(self.prompts, self.steered, self.unsteered)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Steering:
        samples = data["samples"]
        return cls(float(data["factor"]), float(data["strength"]), float(data["temperature"]), int(data["seed"]),
                   *(tuple(str(x[k]) for x in samples) for k in ("prompt", "steered", "unsteered")))


@dataclass(frozen=True)
class PositionLens:
    """The logit lens of the mean difference at one position (or pooled over positions)."""

    position: int | None
    """Token position in the text (1 = the token after the first); None: pooled over positions."""
    n_texts: int
    diff_norm: float
    promoted: tuple[TokenScore, ...]
    suppressed: tuple[TokenScore, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position, "n_texts": self.n_texts, "diff_norm": self.diff_norm,
            "promoted": [t.to_dict() for t in self.promoted], "suppressed": [t.to_dict() for t in self.suppressed],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PositionLens:
        position = data["position"]
        return cls(None if position is None else int(position), int(data["n_texts"]), float(data["diff_norm"]),
                   tuple(map(TokenScore.from_dict, data["promoted"])), tuple(map(TokenScore.from_dict, data["suppressed"])))


@dataclass(frozen=True)
class LayerLens:
    """The lens at one layer: per position, pooled, and the steered samples."""

    layer: int
    base_norm: float
    ft_norm: float
    """Typical residual norms of each model at the layer (positions >= 5)."""
    positions: tuple[PositionLens, ...]
    pooled: PositionLens
    steering: Steering | None
    sums: DifferenceSums | None = field(default=None, repr=False, compare=False)
    """The float64 sums everything above comes from (not in to_dict: None in a lens read back
    from JSON)."""

    @property
    def relative_shift(self) -> float:
        """Norm of the pooled difference as a share of the base model's typical residual norm."""
        return self.pooled.diff_norm / self.base_norm if self.base_norm else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer, "base_norm": self.base_norm, "ft_norm": self.ft_norm,
            "relative_shift": self.pooled.diff_norm / self.base_norm if self.base_norm else None,
            "pooled": self.pooled.to_dict(), "positions": [p.to_dict() for p in self.positions],
            "steering": None if self.steering is None else self.steering.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerLens:
        steering = data.get("steering")
        return cls(int(data["layer"]), float(data["base_norm"]), float(data["ft_norm"]),
                   tuple(map(PositionLens.from_dict, data["positions"])), PositionLens.from_dict(data["pooled"]),
                   None if steering is None else Steering.from_dict(steering))


@dataclass(frozen=True)
class LearnedLens:
    """Activation Difference Lens of a fine-tune against its base (Minder et al. 2025)."""

    method: str
    base: str
    ft: str
    text_source: str
    n_texts: int
    layers: tuple[LayerLens, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "base": self.base, "ft": self.ft, "text_source": self.text_source,
            "n_texts": self.n_texts, "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LearnedLens:
        """The lens :meth:`to_dict` wrote (its layers without their sums)."""
        return cls(str(data["method"]), str(data["base"]), str(data["ft"]), str(data["text_source"]), int(data["n_texts"]),
                   tuple(map(LayerLens.from_dict, data["layers"])))

    def render(self) -> str:
        """A few lines for the text summary."""
        lines = ["What this fine-tune appears to have been trained on (Activation Difference Lens):"]
        for layer in self.layers:
            lines += _layer_lines(layer)
        return "\n".join(lines)


def _layer_lines(layer: LayerLens) -> list[str]:
    shift = layer.relative_shift
    if layer.pooled.diff_norm == 0:
        return [f"  layer {layer.layer}: no difference between the models on the texts read."]
    out = [
        f"  layer {layer.layer} (shift {shift:.1%} of the residual norm):",
        f"    promoted tokens: {_tokens(layer.pooled.promoted)}",
        f"    suppressed tokens: {_tokens(layer.pooled.suppressed)}",
    ]
    if layer.steering is not None:
        out.append(f"    steered samples (x{layer.steering.factor:g} of the typical norm):")
        out += [f"      - {_clip(s)}" for s in layer.steering.steered]
    return out


def _tokens(scores: tuple[TokenScore, ...]) -> str:
    return ", ".join(repr(t.token) for t in scores[:_SHOWN_TOKENS])


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SHOWN_CHARS else flat[: _SHOWN_CHARS - 1] + "…"
