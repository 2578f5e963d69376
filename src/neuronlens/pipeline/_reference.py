"""The base model's half of an audit, measured once and reusable: :class:`BaseReference`."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._base_cache import base_pass_key, load_base_residuals, store_base_residuals
from .._distributed import inputs_digest, main_first
from .._progress import progress
from ..capture import Batch, TokenSequence, make_batches
from ..config import AuditConfig
from ..errors import ModelLoadError
from ..models import ModelHandle, hidden_size, num_layers
from ..probes import ProbeSet, response_sequences, responses_sha256, shard_indices
from ..report import AuditReport
from ..risk import EvidenceStore, RiskSetup, prepare_risk
from ..saes import SAESet
from ..stats import AuditSums
from ._accumulate import Accumulator, BaseBatch
from ._assemble import assemble, in_memory_identity
from ._passes import accumulate_base, base_forward, every_rank, ft_pass, one_side_pass
from ._plan import AuditPlan
from ._reads import OneSideRead, ReadInputs, one_side_reads
from ._residency import ModelView, resident, runtime_of
from ._timing import StageTimes, now

if TYPE_CHECKING:
    from .._distributed import DataParallel
    from ._learned import LearnedStage
    from ._preference import PreferenceResult

Resident = Callable[[], AbstractContextManager[nn.Module]]
"""Makes a model resident for the duration of a `with` block and yields its module."""


@dataclass(frozen=True)
class BaseMeasurement:
    """The base pass: the base residuals of every measured token (for the paired 'same' read;
    about n_tokens x d_model x layers floats), the sums with the base sides of the one-side reads,
    and their per-prompt base means."""

    batches: tuple[BaseBatch, ...]
    sums: AuditSums
    base_means: dict[Any, torch.Tensor]


@dataclass(frozen=True)
class FineTunedRun:
    """What one fine-tuned model's passes add to the base reference."""

    sums: AuditSums
    """Every read's sums, all ranks' in a data-parallel audit."""
    evidence: EvidenceStore | None
    runtime: Mapping[str, str]
    """The fine-tuned model's dtype and device(s) as it was read (see :func:`runtime_of`)."""
    responses: Mapping[str, Mapping[str, str]]
    """Per one-side read, per probe set: sha256 of the text its 'ft' side read (see :func:`responses_sha256`)."""
    times: StageTimes
    answers: Mapping[str, tuple[TokenSequence, ...]] = field(default_factory=dict)
    """The texts the reads read, all ranks' prompts: 'base' (the base model's responses) and
    every one-side read's (the behavioural evidence decodes and scores them)."""
    prompt_shifts: Mapping[tuple[str, int, tuple[str, int]], torch.Tensor] = field(default_factory=dict)
    """Per (one-side read, layer, (probe set, prompt)): its concept coordinates minus the base side's."""


class BaseReference:
    """The base model's half of an audit, measured once and reusable.

    Holds the plan (settings with layers resolved, probe sets, SAEs), the probe sequences both
    models read, the risk concepts' directions and, after :meth:`measure_base`, the base pass.
    :meth:`score` runs the rest of :func:`compare_models` - fine-tuned pass, one-side reads, layer
    drift, risk - for any module with the base model's architecture, without running the base
    model again, so a model can be audited repeatedly while it trains. Its life: prepared ->
    measured (reusable) -> consumed (its base pass handed to one audit by ``measure(consume=True)``).
    """

    def __init__(self, base: ModelHandle, plan: AuditPlan, sequences: list[TokenSequence], same_responses: dict[str, str],
                 risk: RiskSetup | None, times: StageTimes, parallel: DataParallel | None = None) -> None:
        self.base, self.plan, self.parallel = base, plan, parallel
        self.risk = risk
        """The risk concepts' directions (None when 'misalignment_score' is not among the metrics)."""
        self.same_responses = same_responses
        """Per probe set, sha256 of the base responses both models read (all ranks' prompts)."""
        self._sequences = tuple(sequences)
        self._times = times
        self._measured: BaseMeasurement | None = None
        self._state = "prepared"

    @classmethod
    def prepare(cls, base: ModelHandle, plan: AuditPlan, times: StageTimes, parallel: DataParallel | None = None) -> BaseReference:
        """The probe sequences (base responses, cached) and the risk concepts' directions (cached):
        everything of the base model's half but the base pass. In a data-parallel audit, only this
        rank's prompts; the concept associations are built (and cached) by rank 0 first, then read
        by the others, and the ranks check they hold the same SAEs and concept directions."""
        t = now()
        seqs = _base_responses(base, plan, parallel)
        same = responses_sha256(every_rank(seqs, parallel))
        times, t = times.since("base_responses_s", t), now()
        with main_first(parallel):
            risk = prepare_risk(base, plan.sae, plan.layers, plan.config.concepts) if plan.scores_risk else None
        times = times.since("concepts_s", t)
        if parallel is not None:
            parallel.check_same("SAEs and risk concepts", {
                "saes": {str(la): plan.sae[la].digest for la in plan.layers},
                "concepts": None if risk is None else [c.name for c in risk.concepts],
                "directions": None if risk is None else inputs_digest(risk.matrices),
            })
        return cls(base, plan, seqs, same, risk, times, parallel)

    # -- what the plan says ------------------------------------------------------------------------
    @property
    def config(self) -> AuditConfig:
        """The settings every measurement uses (layers resolved)."""
        return self.plan.config

    @property
    def layers(self) -> list[int]:
        return self.plan.layers

    @property
    def sae(self) -> SAESet:
        return self.plan.sae

    @property
    def probe_sets(self) -> list[ProbeSet]:
        return list(self.plan.probe_sets)

    @property
    def reads(self) -> list[str]:
        return list(self.plan.reads)

    @property
    def times(self) -> StageTimes:
        """Seconds of the base model's stages so far (validation, responses, concepts, base pass)."""
        return self._times

    # -- the base pass ---------------------------------------------------------------------------
    def measure_base(self, resident: Resident, *, use_cache: bool = True) -> None:
        """Run the base pass. `resident()` makes the base model resident for the forward passes;
        it is not called when the base residuals come from the cache (`use_cache`)."""
        if self._state != "prepared":
            raise RuntimeError(f"The base pass of this reference has run already (state: {self._state}).")
        t = now()
        sums = AuditSums.empty()
        acc = Accumulator(self.sae, sums, self.risk, None)
        pad_id = self.base.tokenizer.pad_token_id or 0
        batches = list(make_batches(self._sequences, self.config.positions, self.config.token_budget, pad_id))
        resid = self._base_residuals(batches, resident, use_cache)
        one_side = tuple(r.name for r in one_side_reads(self.config))
        kept = accumulate_base(batches, resid, self.layers, self.config, acc, one_side)
        self._measured = BaseMeasurement(kept, sums, acc.base_means)
        self._times = self._times.since("base_pass_s", t)
        self._state = "measured"

    def _base_residuals(self, batches: list[Batch], resident: Resident, use_cache: bool) -> list[dict[int, torch.Tensor]]:
        key = base_pass_key(self.base, batches, self.layers, self.parallel) if use_cache and self.base.cacheable else None
        resid = load_base_residuals(key, len(batches), self.layers) if key is not None else None
        if resid is None:
            with resident() as base_nn:
                resid = base_forward(base_nn, batches, self.layers, f"the base model {self.base.name}")
            if key is not None:
                store_base_residuals(key, resid)
        return resid

    # -- a fine-tuned model against it -----------------------------------------------------------
    def measure(self, ft_nn: nn.Module, view: ModelView, *, consume: bool, use_cache: bool = True,
                base_reader: Resident | None = None) -> FineTunedRun:
        """The fine-tuned passes: the paired 'same' read, then every one-side read. `consume`: use
        the base statistics in place and drop the base residuals after the paired pass (one
        audit); otherwise work on a copy (reusable). `use_cache`: cache the model's own
        responses (False for a model whose weights change under one digest). `base_reader`:
        makes the base model resident for a read whose text the base model reads."""
        if self._state != "measured":
            raise RuntimeError(f"This reference cannot measure a model (state: {self._state}).")
        acc, t = self._accumulator(consume), now()
        ft_pass(ft_nn, self._batches(consume), self.layers, acc, view.name)
        times = StageTimes().since("ft_pass_s", t)
        responses: dict[str, dict[str, str]] = {}
        answers = {"base": tuple(every_rank(list(self._sequences), self.parallel))}
        for read in one_side_reads(self.config):
            t = now()
            answers[read.name] = tuple(every_rank(self._one_side(read, ft_nn, view, acc, use_cache, base_reader), self.parallel))
            responses[read.name] = responses_sha256(answers[read.name])
            times = times.since(read.timing, t)
        sums, evidence, shifts = acc.sums, acc.evidence, acc.prompt_shifts
        if self.parallel is not None:  # every rank gets every rank's sums and evidence
            t = now()
            sums = self.parallel.all_reduce_sums(sums)
            evidence = self.parallel.gather_evidence(evidence) if evidence is not None else None
            shifts = {k: v for part in self.parallel.all_gather(shifts) for k, v in part.items()}
            times = times.since("all_reduce_s", t)
        if evidence is not None:
            evidence.sort_records()
        return FineTunedRun(sums, evidence, runtime_of(ft_nn), responses, times, answers, shifts)

    def _accumulator(self, consume: bool) -> Accumulator:
        assert self._measured is not None
        sums = self._measured.sums if consume else copy.deepcopy(self._measured.sums)
        evidence = EvidenceStore(prompts={ps.name: ps.prompts for ps in self.plan.probe_sets}) if self.risk is not None else None
        return Accumulator(self.sae, sums, self.risk, evidence, self._measured.base_means)

    def _batches(self, consume: bool) -> tuple[BaseBatch, ...]:
        """The base pass's batches; with `consume`, the reference lets go of them (they are freed
        once the paired pass is done with them)."""
        assert self._measured is not None
        batches = self._measured.batches
        if consume:
            self._measured, self._state = None, "consumed"
        return batches

    def _one_side(self, read: OneSideRead, ft_nn: nn.Module, view: ModelView, acc: Accumulator, use_cache: bool,
                  base_reader: Resident | None) -> list[TokenSequence]:
        """The 'ft' side of one-side read `read`: its text, read by its reader; returns the text."""
        shard = self.parallel.spec if self.parallel is not None else None
        seqs = read.sequences(ReadInputs(view, self.base, self._sequences, self.plan.probe_sets, self.config, shard, use_cache,
                                         base_reader))
        if read.reader == "base" and base_reader is None:
            raise RuntimeError(f"The {read.name!r} read needs the base model, and this measurement was given no way to load it.")
        reader = nullcontext(ft_nn) if read.reader == "ft" else base_reader()  # type: ignore[misc]
        name = view.name if read.reader == "ft" else f"the base model {self.base.name}"
        pad_id = self.base.tokenizer.pad_token_id or 0
        with reader as model:
            one_side_pass(model, seqs, read.name, read.label, self.layers, self.config, acc, pad_id, name)
        return seqs

    def report(self, run: FineTunedRun, ft_identity: dict[str, Any], t_start: float,
               learned: LearnedStage | None = None, preference: PreferenceResult | None = None) -> AuditReport:
        """The audit report of `run` (`t_start`: when the audit began, for its total time), with
        the lens stage's result `learned` and the preference margins `preference` when they ran."""
        return assemble(self, run, ft_identity, t_start, learned, preference)

    def score(self, model: nn.Module, *, identity: dict[str, Any] | None = None, name: str = "in-memory model") -> AuditReport:
        """Audit `model` (a fine-tune of the base: full model or PEFT-wrapped) against this
        reference and return the report. `identity` is what the report records about the model
        (default: an in-memory model named `name`, with no file digests). The caller decides
        train/eval mode; gradients are never taken. Raises :class:`ModelLoadError` when the
        module's architecture differs from the base model's."""
        if self._state != "measured":
            raise RuntimeError(f"This reference cannot score a model (state: {self._state}).")
        self.check_module(model)
        t_start = now()
        with torch.no_grad():
            view = ModelView("", self.base.tokenizer, model, f"the model being checked ({name})")
            run = self.measure(model, view, consume=False, use_cache=False,
                               base_reader=lambda: resident(self.base, keep=self.base.is_loaded))
        return self.report(run, identity if identity is not None else in_memory_identity(name), t_start)

    def check_module(self, model: nn.Module) -> None:
        """Raise :class:`ModelLoadError`, naming both shapes, when `model` cannot be compared with
        the base model (different layer count, hidden size, or fewer token embeddings)."""
        base = self.base
        try:
            n_layers, d_model = num_layers(model), hidden_size(model)
        except (AttributeError, ModelLoadError) as exc:
            raise ModelLoadError(
                f"Cannot read the layer count and hidden size of the {type(model).__name__} to compare it with the base model {base.name}.",
                "Pass the transformers causal LM being fine-tuned (or its PEFT wrapper).",
            ) from exc
        if (n_layers, d_model) != (base.n_layers, base.d_model):
            raise ModelLoadError(
                f"The model being checked ({type(model).__name__}: {n_layers} layers, hidden size {d_model}) does not have "
                f"the architecture of the base model {base.name} ({base.n_layers} layers, hidden size {base.d_model}).",
                "Monitor a fine-tune of the base model the monitor was built with: build it from the checkpoint you "
                "started fine-tuning from.",
            )
        get_emb = getattr(model, "get_input_embeddings", None)
        emb = get_emb() if callable(get_emb) else None
        n_vocab = getattr(emb, "num_embeddings", None)
        if isinstance(n_vocab, int) and n_vocab < len(base.tokenizer):
            raise ModelLoadError(
                f"The model being checked has {n_vocab} token embeddings, fewer than the base tokenizer's {len(base.tokenizer)} tokens.",
                "Monitor a fine-tune of the base model the monitor was built with (same tokenizer).",
            )


def _base_responses(base: ModelHandle, plan: AuditPlan, parallel: DataParallel | None) -> list[TokenSequence]:
    """Prompts and the base model's greedy responses (cached): the text both models read."""
    shard = parallel.spec if parallel is not None else None
    n_prompts = sum(len(shard_indices(len(ps.prompts), shard)) for ps in plan.probe_sets)
    with progress("Base responses to probes", n_prompts) as advance:
        return response_sequences(base, plan.probe_sets, plan.config.max_new_tokens, token_budget=plan.config.token_budget,
                                  on_batch=advance, shard=shard, use_cache=base.cacheable)
