"""The one-side reads: registry and the text each one reads.

A read is a name in the report ('same', 'own', ...). 'same' is the paired read of both models on
the base model's responses (token by token) and is always there. Every other read is one-sided:
side 'base' is the base model on its own responses (measured once, in the base pass, for all
one-side reads); side 'ft' is `reader` ('ft': the model being audited; 'base': the base model) on
the text `sequences` produces, paired with the base side prompt by prompt.

Adding a read takes a function producing its sequences and one entry in :data:`ONE_SIDE_READS`;
the passes, sums, evidence, report reads and responses digests follow from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from .._progress import progress
from ..amplify import Pair, module_pair, resident_amplified_responses
from ..capture import TokenSequence
from ..config import AuditConfig
from ..errors import ConfigError
from ..models import ModelHandle
from ..probes import ProbeSet, response_sequences, shard_indices
from ._residency import ModelView


@dataclass(frozen=True)
class ReadInputs:
    """What a read's text may be made from."""

    ft: ModelView
    """The model being audited (resident)."""
    base: ModelHandle
    base_sequences: tuple[TokenSequence, ...]
    """The base model's responses (this rank's), which the base pass read."""
    probe_sets: tuple[ProbeSet, ...]
    config: AuditConfig
    shard: tuple[int, int] | None
    """A data-parallel rank's prompts (the ones its base pass read), or None."""
    use_cache: bool
    """False for a model whose weights change under the same digest (one in training)."""
    base_model: Callable[[], AbstractContextManager[nn.Module]] | None = None
    """Makes the base model resident (the measurement's base reader), for a read that runs it."""


@dataclass(frozen=True)
class OneSideRead:
    """One registered one-side read (see the module docstring)."""

    name: str
    reader: Literal["ft", "base"]
    """Which model reads the text on the 'ft' side."""
    sequences: Callable[[ReadInputs], list[TokenSequence]]
    enabled: Callable[[AuditConfig], bool]
    """Whether an audit with these settings runs the read."""
    label: str
    """Progress label of the reading pass."""
    timing: str
    """Its key in the report's timings (generation and reading together)."""
    switch: str = ""
    """The setting that turns it on, as an error's fix names it."""


def own_responses(inputs: ReadInputs) -> list[TokenSequence]:
    """The fine-tuned model's own greedy responses to the probes (this rank's prompts)."""
    cfg = inputs.config
    with progress("Fine-tuned responses to probes", _n_prompts(inputs)) as advance:
        return response_sequences(
            inputs.ft, inputs.probe_sets, cfg.max_new_tokens, token_budget=cfg.token_budget, use_cache=inputs.use_cache,
            on_batch=advance, shard=inputs.shard,
        )


def amplified_answers(inputs: ReadInputs) -> list[TokenSequence]:
    """The fine-tune's amplified greedy answers to the probes (this rank's prompts): generated from
    logits_ft + amplify_alpha x (logits_ft - logits_base), as long as the own responses, cached
    under the keys of ``amplify.amplified_responses`` (the two share answers). Memory: a PEFT
    adapter injected into the resident base weights runs both sides on that one module; any other
    fine-tune (a full checkpoint, the monitor's in-memory model) is stepped beside the base model,
    both resident during the generation (SmolLM2-135M in float32: 0.54 GB of weights each)."""
    cfg = inputs.config
    assert cfg.amplify_alpha is not None
    with progress("Amplified answers to probes", _n_prompts(inputs)) as advance:
        return list(resident_amplified_responses(
            lambda: _amplify_sides(inputs), inputs.ft.tokenizer, inputs.probe_sets, base_digest=inputs.base.digest,
            ft_digest=inputs.ft.digest, alpha=float(cfg.amplify_alpha), max_new_tokens=cfg.max_new_tokens,
            token_budget=cfg.token_budget, use_cache=inputs.use_cache and inputs.base.cacheable, on_batch=advance,
            shard=inputs.shard,
        ))


@contextmanager
def _amplify_sides(inputs: ReadInputs) -> Iterator[Pair]:
    """Both sides of the amplified generation, from the models the audit holds."""
    ft_nn = inputs.ft.model
    if _shares_resident_base(ft_nn, inputs.base):
        yield module_pair(ft_nn)
        return
    if inputs.base_model is None:
        raise RuntimeError("The 'amplified' read needs the base model, and this measurement was given no way to load it.")
    with inputs.base_model() as base_nn:
        yield module_pair(ft_nn, base_nn)


def _shares_resident_base(model: Any, base: ModelHandle) -> bool:
    """Whether `model` is a PEFT model injected into `base`'s resident weights (its base side is
    then its adapter switched off)."""
    get_base = getattr(model, "get_base_model", None)
    return callable(get_base) and base.is_loaded and get_base() is base.model


def _n_prompts(inputs: ReadInputs) -> int:
    return sum(len(shard_indices(len(ps.prompts), inputs.shard)) for ps in inputs.probe_sets)


ONE_SIDE_READS: tuple[OneSideRead, ...] = (
    OneSideRead("own", "ft", own_responses, lambda cfg: cfg.own_responses, "Fine-tuned model on its own responses", "ft_own_pass_s",
                "own_responses=True"),
    OneSideRead("amplified", "base", amplified_answers, lambda cfg: cfg.amplify_alpha is not None,
                "Base model on the amplified answers", "amplified_pass_s", "amplify_alpha=1.0"),
)
"""Every one-side read, in report order."""


def one_side_reads(config: AuditConfig) -> tuple[OneSideRead, ...]:
    """The one-side reads an audit with `config` runs."""
    return tuple(r for r in ONE_SIDE_READS if r.enabled(config))


def reads_of(config: AuditConfig) -> tuple[str, ...]:
    """Every read of an audit with `config`: 'same', then its one-side reads."""
    return ("same", *(r.name for r in one_side_reads(config)))


def check_score_reads(config: AuditConfig) -> None:
    """A :class:`ConfigError` when `config.score_reads` names a read the audit does not run (a
    misspelt name, or a read whose setting is off), before any long work."""
    reads = reads_of(config)
    missing = [r for r in config.score_reads if r not in reads]
    if not missing:
        return
    switches = {r.name: r.switch for r in ONE_SIDE_READS}
    kept = [r for r in config.score_reads if r in reads] or ["same"]
    off = [switches[r] for r in missing if r in switches]
    unknown = [r for r in missing if r not in switches]
    fix = (f"Use only the reads {', '.join(['same', *switches])}." if unknown else
           f"Turn the read on ({', '.join(off)}) or leave it out: score_reads={kept!r}.")
    raise ConfigError(f"score_reads={config.score_reads!r} names {', '.join(map(repr, missing))}, which this audit does not run "
                      f"(it runs {', '.join(reads)}).", fix)
