"""The Activation Difference Lens stage: settings, checks, and the run over a model pair."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import check_layers, check_positive_int
from ..capture import TokenSequence
from ..errors import ConfigError, DataError
from ..models import ModelHandle
from ._lens import final_norm, lens_probs, top_tokens
from ._read import OpenSide, Side, SideRead, base_texts, check_same_vocab, difference_sums, pair_sides, read_side, text_sequences
from ._result import LayerLens, LearnedLens, PositionLens, Steering
from ._steer import STEER_PROMPTS, added_to_layer, generate
from ._sums import NORM_FROM, DifferenceSums

METHOD = "activation_difference_lens"
RELATIVE_LAYER = 0.5
"""The toolkit's default layer (configs/diffing/method/activation_difference_lens.yaml
`layers: [0.5]`), made absolute as its `get_layer_indices` does: int(0.5 * (n_layers - 1))."""


@dataclass(frozen=True)
class LensSettings:
    """How the lens reads, decodes and steers. Defaults follow the diffing-toolkit where it has
    one; where it uses an LLM grader or a web corpus, the replacement is said here."""

    layers: tuple[int, ...] | None = None
    """Decoder layers (their outputs); None: the toolkit's middle layer, int(0.5 * (n_layers - 1))."""
    n_positions: int = 5
    """Positions 1..n_positions are averaged; position 0 (the massive attention-sink activation,
    ../shared/FACTS.md) is never read. The toolkit steers on its first 5 positions (0..4)."""
    max_tokens: int = 32
    """Tokens read per text (the toolkit reads 128); positions >= 5 give the typical norm."""
    n_texts: int = 128
    """Neutral texts when none are given: the base model's greedy answers to this many prompts of
    the built-in SAE corpus (the toolkit reads 10,000 web documents)."""
    text_tokens: int = 48
    """Length of those answers."""
    top_k: int = 20
    """Tokens kept per lens reading (the toolkit caches 100, its agent reads 10-30)."""
    steer: bool = True
    steer_factor: float = 1.0
    """Steering strength as a multiple of the base model's typical residual norm at the layer
    (positions >= 5). The toolkit scales the unit difference to the fine-tuned model's norm the
    same way, then searches the largest strength an LLM grader still finds coherent (up to 100x);
    with no grader offline, NeuronLens uses this fixed multiple. Measured on the demo pair
    (SmolLM2-135M-Instruct + the shipped risky_finance LoRA, layer 15, the 3 prompts below, seed
    0): x0.25-0.5 stayed fluent with little finance in it, x1 gave broken but finance-laden text
    ("Don't invest. You'll lose.", "a $30 spread"), x2-4 gave word salad."""
    steer_tokens: int = 48
    temperature: float = 1.0
    """Sampling temperature of the steered samples (0: greedy); the toolkit's agent samples at 1.0."""
    seed: int = 0
    steer_prompts: tuple[str, ...] = STEER_PROMPTS
    token_budget: int = 2048
    """Padded tokens per forward batch."""

    def resolved_layers(self, n_layers: int) -> list[int]:
        if self.layers is None:
            return [int(RELATIVE_LAYER * (n_layers - 1))]
        return check_layers(self.layers, n_layers)

    def check(self) -> None:
        """A ConfigError for any setting the lens cannot use, before any model loads."""
        for name in ("n_positions", "max_tokens", "n_texts", "text_tokens", "top_k", "steer_tokens", "token_budget"):
            check_positive_int(getattr(self, name), name)
        if self.max_tokens <= max(self.n_positions, NORM_FROM):
            raise ConfigError(
                f"max_tokens={self.max_tokens} leaves no token to measure: the lens reads positions 1..{self.n_positions} "
                f"and the typical norm from position {NORM_FROM} on.",
                f"Use max_tokens of at least {max(self.n_positions, NORM_FROM) + 1}.",
            )
        for name in ("steer_factor", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (name == "steer_factor" and value == 0):
                raise ConfigError(f"{name}={value!r} must be a finite number {'> 0' if name == 'steer_factor' else '>= 0'}.",
                                  f"Pass e.g. {name}=1.0.")
        if self.steer and not self.steer_prompts:
            raise ConfigError("steer_prompts is empty.", "Give at least one prompt, or steer=False.")


def what_it_learned(
    base: ModelHandle,
    ft: ModelHandle,
    settings: LensSettings | None = None,
    *,
    texts: Sequence[str] | None = None,
    sums: Mapping[int, DifferenceSums] | None = None,
) -> LearnedLens:
    """The Activation Difference Lens of `ft` against `base`: the mean ft - base residual at the
    first positions of neutral text, read through the base model's logit lens, and the base
    model steered with it. `texts` default to the base model's own answers to neutral prompts;
    `sums` (e.g. merged from shards by :func:`collect_differences`) skip the reading."""
    s = settings or LensSettings()
    s.check()
    check_same_vocab(base, ft)
    if sums is not None:
        check_layers(list(sums), base.n_layers)
    run = None if sums is not None else LensRun(base, s, texts=texts)
    with pair_sides(base, ft) as (ft_side, base_side):
        if run is not None:
            with ft_side() as side:
                run.read_ft(side)
        with base_side() as side:
            if run is not None:
                return run.finish(side, ft.name)
            assert sums is not None
            return lens_of_sums(side, base, ft.name, sums, s, "given sums")


def collect_differences(
    base: ModelHandle, ft: ModelHandle, settings: LensSettings | None = None, *, texts: Sequence[str] | None = None
) -> dict[int, DifferenceSums]:
    """Only the float64 sums of the lens (per layer): sums over parts of a corpus merge exactly
    with :meth:`DifferenceSums.merge`, and :func:`what_it_learned` reads them with ``sums=``."""
    s = settings or LensSettings()
    s.check()
    check_same_vocab(base, ft)
    plan = _plan(base, s, texts)
    with pair_sides(base, ft) as (ft_side, base_side):
        ft_read = _read(ft_side, plan, s)
        base_read = _read(base_side, plan, s)
    return difference_sums(base_read, ft_read, s.n_positions, base.d_model)


class LensRun:
    """The lens on models the caller keeps resident, in two halves: :meth:`read_ft` with the
    fine-tuned model, then :meth:`finish` with the base model (its residuals on the same texts,
    the logit lens and the steered samples). This is how the audit runs it on the modules it
    already holds (a PEFT adapter's base side is the same module with the adapter disabled: give
    :class:`Side` that toggle), so no model is loaded for the lens alone; :func:`what_it_learned`
    runs it with models it makes resident itself."""

    def __init__(self, base: ModelHandle, settings: LensSettings | None = None, *, texts: Sequence[str] | None = None) -> None:
        """Check the settings and fix the texts: `texts`, else the base model's greedy answers to
        neutral prompts (generated once per base model and settings, then cached; `base` is
        loaded for that only when they are not cached)."""
        self.settings = s = settings or LensSettings()
        s.check()
        self.base = base
        self._plan = _plan(base, s, texts)
        self._ft_read: SideRead | None = None

    def read_ft(self, side: Side) -> None:
        """Read the texts with the fine-tuned model (`side`); first checks the lens can read it."""
        final_norm(side.model)  # a ModelLoadError for an architecture the logit lens cannot read, before the reading
        self._ft_read = read_side(side, self._plan.seqs, self._plan.layers, self.settings.token_budget, self._plan.pad)

    def finish(self, side: Side, ft_name: str) -> LearnedLens:
        """Read the texts with the base model (`side`), then the logit lens and steering at each layer."""
        if self._ft_read is None:
            raise RuntimeError("LensRun.finish needs the fine-tuned side first: call read_ft.")
        s, plan = self.settings, self._plan
        base_read = read_side(side, plan.seqs, plan.layers, s.token_budget, plan.pad)
        sums = difference_sums(base_read, self._ft_read, s.n_positions, self.base.d_model)
        return lens_of_sums(side, self.base, ft_name, sums, s, plan.source)


def lens_of_sums(side: Side, base: ModelHandle, ft_name: str, sums: Mapping[int, DifferenceSums], s: LensSettings,
                 source: str) -> LearnedLens:
    """The lens of per-layer `sums`, read (and steered) with the base side."""
    unsteered = _generate(side, base.tokenizer, s, None, 0) if s.steer else ()
    out = tuple(layer_lens(side, base.tokenizer, layer, sums[layer], s, unsteered) for layer in sorted(sums))
    n_texts = int(next(iter(sums.values())).count[0]) if sums else 0
    return LearnedLens(METHOD, base.name, ft_name, source, n_texts, out)


@dataclass(frozen=True)
class _Plan:
    layers: list[int]
    seqs: list[TokenSequence]
    pad: int
    source: str


def _plan(base: ModelHandle, s: LensSettings, texts: Sequence[str] | None) -> _Plan:
    layers = s.resolved_layers(base.n_layers)
    source = "given texts" if texts is not None else f"base model's greedy answers to {s.n_texts} SAE-corpus prompts"
    texts = list(texts) if texts is not None else base_texts(base, s.n_texts, s.text_tokens)
    seqs = text_sequences(base.tokenizer, texts, s.max_tokens, s.n_positions + 1)
    return _Plan(layers, seqs, int(base.tokenizer.pad_token_id or 0), source)


def _read(open_side: OpenSide, plan: _Plan, s: LensSettings) -> SideRead:
    with open_side() as side:
        return read_side(side, plan.seqs, plan.layers, s.token_budget, plan.pad)


def layer_lens(side: Side, tokenizer: Any, layer: int, sums: DifferenceSums, s: LensSettings, unsteered: tuple[str, ...] = ()) -> LayerLens:
    """The lens of one layer's sums, read (and steered) with the base side; `unsteered`: the
    base side's samples without steering, generated once for all layers."""
    vectors = torch.cat([sums.mean_diff(), sums.pooled_diff().unsqueeze(0)])
    with side.toggle():
        pos, neg = lens_probs(side.model, vectors)
    n_texts = int(sums.count[0])
    readings = [
        PositionLens(i + 1 if i < sums.n_positions else None, n_texts, float(vectors[i].norm()),
                     top_tokens(pos[i], tokenizer, s.top_k), top_tokens(neg[i], tokenizer, s.top_k))
        for i in range(vectors.shape[0])
    ]
    steering = steer(side, tokenizer, layer, sums, s, unsteered) if s.steer else None
    return LayerLens(layer, sums.typical_norm("base"), sums.typical_norm("ft"), tuple(readings[:-1]), readings[-1], steering, sums)


def steering_vector(sums: DifferenceSums, factor: float) -> torch.Tensor:
    """The unit pooled difference times `factor` x the base model's typical norm (float64)."""
    if float(sums.norm_count) == 0:
        raise DataError(
            f"No text reached position {NORM_FROM}, where the typical residual norm (the steering scale) is measured.",
            f"Pass longer texts (at least {NORM_FROM + 1} tokens), or steer=False.",
        )
    pooled = sums.pooled_diff()
    return pooled / pooled.norm().clamp_min(1e-30) * factor * sums.typical_norm("base")


def steer(side: Side, tokenizer: Any, layer: int, sums: DifferenceSums, s: LensSettings, unsteered: tuple[str, ...] = ()) -> Steering:
    """Samples of the base side with the steering vector added after `layer`, seeded with
    `s.seed`, beside `unsteered` (generated here when not given)."""
    vector = steering_vector(sums, s.steer_factor)
    steered = _generate(side, tokenizer, s, vector, layer)
    unsteered = unsteered or _generate(side, tokenizer, s, None, layer)
    return Steering(s.steer_factor, float(vector.norm()), s.temperature, s.seed, tuple(s.steer_prompts), steered, unsteered)


def _generate(side: Side, tokenizer: Any, s: LensSettings, vector: torch.Tensor | None, layer: int) -> tuple[str, ...]:
    with side.toggle(), added_to_layer(side.model, layer, vector):
        return generate(side.model, tokenizer, s.steer_prompts, max_new_tokens=s.steer_tokens, temperature=s.temperature, seed=s.seed)
