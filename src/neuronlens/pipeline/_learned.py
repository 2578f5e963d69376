"""The 'what it learned' stage: the Activation Difference Lens (:mod:`neuronlens.learned`) of the
audited pair, run on the modules the audit already holds resident, as one more typed result
(:class:`LearnedStage`) between :class:`~neuronlens.pipeline.FineTunedRun` and the report.

Residency: the lens's texts are the base model's answers to neutral prompts, generated once per
base model and settings and cached (while the base is resident for its probe responses, when those
are generated too). A PEFT adapter injected into the base weights reads them with the adapter on
and off on that one module. A fine-tune with weights of its own reads them while it is resident
for its passes; the base side (its read, the logit lens, the steered samples) then runs on the base
model after the fine-tune is released: resident already when another read kept it, else loaded for
it. The finished lens is cached by both models' digests and the lens settings, so a repeated audit
of the same pair loads no model for it. The training monitor (:meth:`BaseReference.score`) runs
no lens: its weights change under one name, and the lens costs a base-model generation per check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from torch import nn

from .._cache import load_json_entry, store_json_entry
from .._distributed import main_first
from .._progress import progress
from ..config import AuditConfig
from ..errors import DataError, ModelLoadError
from ..learned import METHOD, LearnedLens, LensRun, LensSettings, Side
from ..models import ModelHandle
from ._residency import adapter_off
from ._timing import StageTimes, now

if TYPE_CHECKING:
    from .._distributed import DataParallel

AUDIT_LENS = LensSettings(n_texts=32, text_tokens=32, max_tokens=32, steer_tokens=32)
"""The lens settings of an audit: the lens's defaults (middle layer, positions 1-5, x1 the
typical residual norm, 3 steering prompts at temperature 1, seed 0), read on 32 texts instead of
128, and with 32-token steered samples instead of 48, to keep the default audit cheap. The lens
reads each text's first 32 tokens (its default too), so 32-token answers lose nothing it reads.

Measured on the demo pair (SmolLM2-135M-Instruct + the shipped LoRA adapter), one default audit
with an empty cache, 1 torch thread on the shared, loaded 2-core machine (ratios only): the lens
took 4.7% of the audit (65 s of 1388 s), 0.26x the base model's probe responses
(``base_responses_s``), 0.20x the own-response read, 0.12x the amplified read. Of its time: the
texts 49% (cached per base model, so later audits of any fine-tune of that base skip them), the
steered and unsteered samples 40%, the two reads 11%, the logit lens 0.2%. On the same pair the
32-text pooled difference at layer 14 had cosine 0.975 with the 128-text one, and 8 of the top 10
promoted (and of the suppressed) tokens were the same."""

CACHE_KIND = "learned"
_CACHE_VERSION = 1
"""Bump when the lens computes something else from the same models and settings."""


@dataclass(frozen=True)
class LearnedStage:
    """The stage's typed result: the lens (None when the settings turn it off) and its seconds."""

    lens: LearnedLens | None
    times: StageTimes


class LensStage:
    """The lens of one audit, in the order the audit holds its models: :meth:`prepare` (texts,
    cache), :meth:`read_ft` (the fine-tuned model resident), :meth:`finish` (the base model
    resident), :meth:`result`. Every method is a no-op when the lens is off or was cached."""

    def __init__(self, base: ModelHandle, ft: ModelHandle, run: LensRun | None, lens: LearnedLens | None,
                 key: dict[str, Any] | None, parallel: DataParallel | None, enabled: bool) -> None:
        self.base, self.ft, self.parallel, self.enabled = base, ft, parallel, enabled
        self._run, self._lens, self._key = run, lens, key
        self._seconds = 0.0

    @classmethod
    def prepare(cls, base: ModelHandle, ft: ModelHandle, config: AuditConfig, parallel: DataParallel | None = None) -> LensStage:
        """The stage for `config` (off unless ``config.learned_lens``): the cached lens of this
        pair, else the texts it will read (the base model's answers, generated when not cached)."""
        if not config.learned_lens:
            return cls(base, ft, None, None, None, parallel, enabled=False)
        t = now()
        settings = replace(AUDIT_LENS, token_budget=config.token_budget)
        key = cache_key(base, ft, settings) if base.cacheable and ft.cacheable else None
        with main_first(parallel):  # every rank enters it: rank 0 generates (and caches) the texts first
            lens = _cached(key)
            run = None if lens is not None else _texts(base, settings)
        stage = cls(base, ft, run, lens, key, parallel, enabled=True)
        stage._seconds += now() - t
        return stage

    @property
    def pending(self) -> bool:
        """Whether the models still have to be read (the lens is on and was not cached)."""
        return self._run is not None and self._lens is None

    def read_ft(self, ft_nn: nn.Module) -> None:
        """The fine-tuned side: the texts read by `ft_nn` (resident)."""
        if self.pending:
            t = now()
            assert self._run is not None
            with _in_audit_terms():
                self._run.read_ft(Side(ft_nn, name=f"the fine-tuned model {self.ft.name}"))
            self._seconds += now() - t

    def finish_adapter(self, peft_nn: nn.Module) -> None:
        """The base side of a PEFT adapter injected into the base weights: the same module, adapter off."""
        self._finish(Side(peft_nn, lambda: adapter_off(peft_nn), f"the base model {self.base.name} (adapter disabled)"))

    def finish(self, base_nn: nn.Module) -> None:
        """The base side on the base model `base_nn` (resident)."""
        self._finish(Side(base_nn, nullcontext, f"the base model {self.base.name}"))

    def _finish(self, side: Side) -> None:
        if not self.pending:
            return
        t = now()
        assert self._run is not None
        with progress("What the fine-tune learned: logit lens and steered samples", 1) as advance:
            self._lens = self._run.finish(side, self.ft.name)
            advance(1)
        if self._key is not None and (self.parallel is None or self.parallel.is_main):
            store_json_entry(CACHE_KIND, self._key, self._lens.to_dict())
        self._seconds += now() - t

    def result(self) -> LearnedStage:
        """The finished lens (every rank of a data-parallel audit takes rank 0's, so all reports
        are the same) and the stage's seconds (``learned_s`` in the report's timings)."""
        if not self.enabled:
            return LearnedStage(None, StageTimes())
        if self._lens is None:
            raise RuntimeError("The lens stage was not finished: read_ft and finish (or finish_adapter) must run first.")
        lens = self._lens
        if self.parallel is not None:
            lens = LearnedLens.from_dict(self.parallel.all_gather(lens.to_dict())[0])
        return LearnedStage(lens, StageTimes().plus("learned_s", self._seconds))


def _texts(base: ModelHandle, settings: LensSettings) -> LensRun:
    with progress("What the fine-tune learned: base answers to neutral prompts", 1) as advance, _in_audit_terms():
        run = LensRun(base, settings)
        advance(1)
    return run


@contextmanager
def _in_audit_terms() -> Iterator[None]:
    """A lens that cannot run on these models (no text long enough, a final norm it cannot find)
    stops the audit with the way to audit without it (the lens's own advice on its texts names
    settings the audit does not expose, so only a model's is kept)."""
    try:
        yield
    except (DataError, ModelLoadError) as exc:
        own = f"{exc.fix} Or a" if exc.fix and isinstance(exc, ModelLoadError) else "A"
        raise type(exc)(f"What the fine-tune learned (Activation Difference Lens): {exc.problem}",
                        f"{own}udit without the lens: --no-learned-lens (learned_lens=False).") from exc


def cache_key(base: ModelHandle, ft: ModelHandle, settings: LensSettings) -> dict[str, Any]:
    """What a cached lens depends on: both models' files (an adapter's own base's too), the dtype
    they were asked in, the lens settings and the lens's version."""
    return {
        "method": METHOD, "version": _CACHE_VERSION, "base": base.digest, "ft": ft.digest,
        "ft_base": None if ft.base is None else ft.base.digest, "dtype": [base.dtype, ft.dtype], "settings": asdict(settings),
    }


def _cached(key: dict[str, Any] | None) -> LearnedLens | None:
    payload = load_json_entry(CACHE_KIND, key) if key is not None else None
    if payload is None:
        return None
    try:
        return LearnedLens.from_dict(payload)
    except (KeyError, TypeError, ValueError):  # written by a version whose lens had other fields: rebuild it
        return None
