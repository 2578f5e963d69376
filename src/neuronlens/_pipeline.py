"""The audit pipeline, top to bottom:

    validate inputs -> probe sequences (base responses, cached) -> base pass (capture, encode)
    -> fine-tuned pass (capture, encode, paired sums) -> [own-response pass] -> risk -> report

Everything that can be wrong with the inputs is checked before the first forward pass. With
lazily-loaded handles only one model is resident at a time; a PEFT adapter on the audited base
shares the base weights (adapter injected after the base pass, removed afterwards).

The base model's half (validation, probe sequences, concept directions, base pass) is a
:class:`BaseReference`: `compare_models` builds one and scores one fine-tuned model against it;
:func:`prepare_reference` builds one to score many (the training monitor audits the model being
trained every N steps without re-running the base model).

A data-parallel audit (`parallel`, see :mod:`neuronlens._distributed`) runs the same pipeline on
every rank over that rank's share of the prompts, then all-reduces the sums and gathers the
evidence before the report, so every rank ends with the same report.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import __version__
from ._base_cache import base_pass_key as _base_pass_key
from ._base_cache import load_base_residuals, store_base_residuals
from ._distributed import inputs_digest, main_first
from ._progress import progress
from .capture import Batch, TokenSequence, code_chunk_tokens, gather, make_batches, massive_keep, row_chunks, run_to_layers
from .config import AuditConfig, check_probes
from .errors import ConfigError, ModelLoadError, NonFiniteError
from .models import ModelHandle, check_fine_tune_fits, hidden_size, load_model, num_layers
from .models._peft import peft_wrap_quietly
from .probes import ProbeSet, checked_prompt_ids, handle_context, load_probe_set, response_sequences, responses_sha256, shard_indices
from .report import AuditReport, LayerDrift, rank_features
from .risk import EvidenceStore, RiskSetup, assess, load_concepts, prepare_risk
from .risk._labels import check_label_files, merge_imported
from .saes import SAEArgument, SAESet, as_sae_set, exceeds, quality_warning
from .stats import AuditSums, residual_drift

if TYPE_CHECKING:
    from ._distributed import DataParallel

METRICS = ("drift", "misalignment_score")


@dataclass
class _BaseBatch:
    """What the base pass keeps per batch for the paired fine-tuned pass."""

    batch: Batch
    resid: dict[int, torch.Tensor]
    keep: dict[int, torch.Tensor]


def compare_models(
    base_model: ModelHandle | str,
    ft_model: ModelHandle | str,
    sae: SAEArgument = None,
    probes: Sequence[str] | None = None,
    metrics: Sequence[str] = METRICS,
    *,
    config: AuditConfig | None = None,
    layers: Sequence[int] | None = None,
    keep_both: bool = False,
    parallel: DataParallel | None = None,
    cache_base_pass: bool = True,
) -> AuditReport:
    """Audit `ft_model` against `base_model` and return a typed :class:`AuditReport`.

    `sae`: SAEs for the audited layers: an SAESet from :func:`load_sae`, a folder of SAELens or
    sparsify SAEs, a dict {layer: SparseAutoencoder or folder}, or None (:func:`load_sae`'s
    shipped, cached or trained SAEs for the audited layers).
    `probes`: built-in probe-set names or prompt files (default: every built-in set).
    `metrics`: 'drift' always; 'misalignment_score' adds the risk stage (concept shifts, risky
    features, score and verdict). `config` holds every other setting (:class:`AuditConfig`);
    `layers` overrides its layers. Handles passed unloaded are loaded one at a time and released
    afterwards unless `keep_both`. `parallel` (from :func:`neuronlens._distributed.launch_from_env`):
    a data-parallel audit; every rank calls this with the same arguments, measures its share of
    the prompts, and gets the same report, computed from the all-reduced sums.
    `cache_base_pass`: reuse (and store) the base model's residuals on the probe tokens, keyed by
    everything they depend on, so auditing several fine-tunes of one base runs the base model once
    (a full-weight fine-tune then never loads the base weights when its responses, SAEs and
    concept associations are cached too).
    """
    t_start = time.perf_counter()
    cfg = _settings(config, probes, layers)
    base = base_model if isinstance(base_model, ModelHandle) else load_model(base_model)
    ft = ft_model if isinstance(ft_model, ModelHandle) else load_model(ft_model)
    metrics = _check_metrics(metrics)

    # 1. validate everything before any long work ------------------------------------------------
    probe_sets = preflight(base, ft, cfg, metrics)
    if base.digest == ft.digest:  # e.g. the same folder twice: the audit runs, and can only find no drift
        warnings.warn(f"The fine-tuned model {ft.name} has the same files as the base model {base.name} (manifest sha256 "
                      f"{ft.digest[:12]}...): it is audited against itself, so no drift can show. Check which models "
                      "were given (--base and --ft).", stacklevel=2)
    if parallel is not None:
        parallel.check_same("inputs", _inputs_summary(base, ft, probe_sets, cfg, metrics))
    base_loaded_before = base.is_loaded
    # 2-3. probe sequences (prompts + base responses, cached) and risk concepts (cached) ---------
    ref = _prepare_reference(base, sae, cfg, metrics, probe_sets, t_start, parallel)

    # 4. base pass, then fine-tuned pass on the same tokens (and on its own responses) ----------
    # (no `with ... as model` binding in this frame: it would keep a released model alive)
    t = time.perf_counter()
    if _shares_base_weights(base, ft):
        ref._run_base_pass(lambda: _resident(base, keep=True), use_cache=cache_base_pass)
        ref.timings["base_pass_s"] = time.perf_counter() - t
        run = _measure_adapter(ref, base, ft)
    else:
        ref._run_base_pass(lambda: _resident(base, keep=keep_both or base_loaded_before), use_cache=cache_base_pass)
        ref.timings["base_pass_s"] = time.perf_counter() - t
        run = _measure_resident(ref, ft, keep=keep_both or ft.is_loaded)
    if not (keep_both or base_loaded_before):
        base.release()

    # 5-6. layer drift, most-drifted latents, risk --------------------------------------------------
    return ref._report(run, ft.identity, t_start)


def _measure_adapter(ref: BaseReference, base: ModelHandle, ft: ModelHandle) -> _Run:
    """The fine-tuned passes of a PEFT adapter injected into the resident base weights."""
    with _adapter_on(base.model, ft) as ft_nn:
        return ref._measure(ft_nn, _ModelView(ft.digest, ft.tokenizer, ft_nn, f"the fine-tuned model {ft.name}"), consume=True)


def _measure_resident(ref: BaseReference, ft: ModelHandle, *, keep: bool) -> _Run:
    """The fine-tuned passes of a model with weights of its own (released afterwards unless `keep`)."""
    with _resident(ft, keep=keep) as ft_nn:
        return ref._measure(ft_nn, _ModelView(ft.digest, ft.tokenizer, ft_nn, f"the fine-tuned model {ft.name}"), consume=True)


def prepare_reference(
    base_model: ModelHandle | str,
    sae: SAEArgument = None,
    probes: Sequence[str] | None = None,
    metrics: Sequence[str] = METRICS,
    *,
    config: AuditConfig | None = None,
    layers: Sequence[int] | None = None,
    cache_base_pass: bool = True,
) -> BaseReference:
    """Run the base model's half of an audit once (validation, probe sequences, concept
    directions, base pass) and return a :class:`BaseReference` whose :meth:`~BaseReference.score`
    audits any number of fine-tuned modules against it. Arguments as in :func:`compare_models`.
    A base handle passed unloaded is loaded for the base pass and released afterwards."""
    t_start = time.perf_counter()
    cfg = _settings(config, probes, layers)
    base = base_model if isinstance(base_model, ModelHandle) else load_model(base_model)
    metrics = _check_metrics(metrics)
    probe_sets = _preflight_settings(base, cfg, metrics)
    loaded_before = base.is_loaded
    ref = _prepare_reference(base, sae, cfg, metrics, probe_sets, t_start)
    t = time.perf_counter()
    ref._run_base_pass(lambda: _resident(base, keep=loaded_before), use_cache=cache_base_pass)
    ref.timings["base_pass_s"] = time.perf_counter() - t
    return ref


def _settings(config: AuditConfig | None, probes: Sequence[str] | None, layers: Sequence[int] | None) -> AuditConfig:
    if config is not None and not isinstance(config, AuditConfig):  # a dict failed as a raw TypeError in replace()
        raise ConfigError(f"config={config!r:.80} (type {type(config).__name__}) is not an AuditConfig.",
                          "Pass config=AuditConfig(...) (AuditConfig(**settings) or AuditConfig.from_dict(settings) for a dict), or None.")
    cfg = replace(config or AuditConfig())
    if probes is not None:
        cfg.probes = check_probes(probes)  # "finance" is one set, not the sets 'f', 'i', 'n', ...
    if layers is not None:
        cfg.layers = list(layers)
    return cfg


def runtime_of(model: nn.Module) -> dict[str, str]:
    """dtype and device(s) of `model`'s weights: bfloat16 moves the numbers (layer drift within
    about 10% of float32's, tests/test_cuda.py), so a report and its certificate say which it was."""
    params = list(model.parameters())
    return {
        "dtype": ",".join(sorted({str(p.dtype).removeprefix("torch.") for p in params})),
        "device": ",".join(sorted({str(p.device) for p in params})),
    }


@dataclass
class _Run:
    """What one fine-tuned model's passes add to the base reference."""

    sums: AuditSums
    evidence: EvidenceStore | None
    timings: dict[str, float]
    runtime: dict[str, str]
    """The fine-tuned model's dtype and device(s) as it was read (see :func:`runtime_of`)."""
    own_responses: dict[str, str] = field(default_factory=dict)
    """Per probe set, sha256 of the fine-tuned model's own responses it read (see :func:`responses_sha256`)."""


@dataclass
class BaseReference:
    """The base model's half of an audit, measured once and reusable.

    Holds the validated settings (layers resolved), the probe sequences both models read, the risk
    concepts' directions and the base pass's statistics, including the base residuals of every
    measured token (kept for the paired 'same' read; about n_tokens x d_model x layers floats).
    :meth:`score` runs the rest of :func:`compare_models` - fine-tuned pass, own-response pass,
    layer drift, risk - for any module with the base model's architecture, without running the
    base model again, so a model can be audited repeatedly while it trains.
    """

    base: ModelHandle
    sae: SAESet
    config: AuditConfig
    probe_sets: list[ProbeSet]
    risk: RiskSetup | None
    """Concept directions (None when 'misalignment_score' is not among the metrics)."""
    imported_labels: dict[tuple[int, int], tuple[str, str]]
    reads: list[str]
    timings: dict[str, float]
    """Time spent on the base model's half, by stage."""
    parallel: DataParallel | None = field(default=None, repr=False)
    """A data-parallel audit: the passes read this rank's prompts; sums and evidence are combined
    over ranks before the report."""
    _seqs: list[TokenSequence] = field(default_factory=list, repr=False)
    _same_responses: dict[str, str] = field(default_factory=dict, repr=False)
    """Per probe set, sha256 of the base responses both models read (all ranks' prompts)."""
    _batches: list[_BaseBatch] = field(default_factory=list, repr=False)
    _sums: AuditSums = field(default_factory=AuditSums.empty, repr=False)
    _own_base_means: dict[tuple[str, int, tuple[str, int]], torch.Tensor] = field(default_factory=dict, repr=False)
    _state: str = "prepared"
    """'prepared' (no base pass yet), 'measured' (reusable) or 'consumed' (handed to one audit)."""

    @property
    def layers(self) -> list[int]:
        return list(self.config.layers or [])

    def score(self, model: nn.Module, *, identity: dict[str, Any] | None = None, name: str = "in-memory model") -> AuditReport:
        """Audit `model` (a fine-tune of the base: full model or PEFT-wrapped) against this
        reference and return the report. `identity` is what the report records about the model
        (default: an in-memory model named `name`, with no file digests). The caller decides
        train/eval mode; gradients are never taken. Raises :class:`ModelLoadError` when the
        module's architecture differs from the base model's."""
        if self._state != "measured":
            raise RuntimeError(f"This reference cannot score a model (state: {self._state}).")
        self.check_module(model)
        t_start = time.perf_counter()
        with torch.no_grad():
            view = _ModelView("", self.base.tokenizer, model, f"the model being checked ({name})")
            run = self._measure(model, view, consume=False, cache_responses=False)
        return self._report(run, identity if identity is not None else in_memory_identity(name), t_start)

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

    # -- the halves compare_models is made of ----------------------------------------------------
    def _run_base_pass(self, resident: Callable[[], AbstractContextManager[nn.Module]], *, use_cache: bool) -> None:
        """The base pass. `resident()` makes the base model resident for the forward passes; it
        is not called when the base residuals come from the cache."""
        acc = _Accumulator(self.sae, self._sums, self.risk, None)
        pad_id = self.base.tokenizer.pad_token_id or 0
        batches = list(make_batches(self._seqs, self.config.positions, self.config.token_budget, pad_id))
        key = _base_pass_key(self.base, batches, self.layers, self.parallel) if use_cache and self.base.cacheable else None
        resid = load_base_residuals(key, len(batches), self.layers) if key is not None else None
        if resid is None:
            with resident() as base_nn:
                resid = _base_forward(base_nn, batches, self.layers, f"the base model {self.base.name}")
            if key is not None:
                store_base_residuals(key, resid)
        self._batches = _accumulate_base(batches, resid, self.layers, self.config, acc, self.reads)
        self._own_base_means = acc.own_base_means
        self._state = "measured"

    def _measure(self, ft_nn: nn.Module, view: _ModelView, *, consume: bool, cache_responses: bool = True) -> _Run:
        """The fine-tuned passes. `consume`: use the base statistics in place and drop the base
        residuals after the paired pass (one audit); otherwise work on a copy (reusable)."""
        sums = self._sums if consume else copy.deepcopy(self._sums)
        evidence = EvidenceStore(prompts={ps.name: ps.prompts for ps in self.probe_sets}) if self.risk is not None else None
        acc = _Accumulator(self.sae, sums, self.risk, evidence, self._own_base_means)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        _ft_pass(ft_nn, self._batches, self.layers, acc, view.name)
        timings["ft_pass_s"] = time.perf_counter() - t
        if consume:
            self._batches.clear()
            self._state = "consumed"
        own_responses: dict[str, str] = {}
        if self.config.own_responses:
            t = time.perf_counter()
            pad_id = self.base.tokenizer.pad_token_id or 0
            shard = self.parallel.spec if self.parallel is not None else None
            own = _own_pass(view, self.probe_sets, self.layers, self.config, acc, pad_id, use_cache=cache_responses, shard=shard)
            own_responses = responses_sha256(_every_rank(own, self.parallel))
            timings["ft_own_pass_s"] = time.perf_counter() - t
        if self.parallel is not None:  # every rank gets every rank's sums and evidence
            t = time.perf_counter()
            sums = self.parallel.all_reduce_sums(sums)
            evidence = self.parallel.gather_evidence(evidence) if evidence is not None else None
            timings["all_reduce_s"] = time.perf_counter() - t
        if evidence is not None:
            evidence.sort_records()
        return _Run(sums, evidence, timings, runtime_of(ft_nn), own_responses)

    def _report(self, run: _Run, ft_identity: dict[str, Any], t_start: float) -> AuditReport:
        _refuse_non_finite_sums(run.sums, str(ft_identity.get("name", "the fine-tuned model")))
        timings = {**self.timings, **run.timings}
        layers = self.layers
        report = AuditReport(
            base=self.base.identity,
            ft=ft_identity,
            saes=[s for s in self.sae.identity() if s["layer"] in layers],
            probe_sets=[_probe_identity(ps, self._same_responses, run.own_responses) for ps in self.probe_sets],
            config=self.config.to_dict(),
            layers=[],
            top={},
            neuronlens_version=__version__,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            sae_warnings=SAESet({la: self.sae[la] for la in layers}).quality_warnings(self.config.max_sae_fvu)
            + probe_fvu_warnings(run.sums, layers, self.config.max_sae_fvu),
            timings=timings,
            sums=run.sums,
            reads=list(self.reads),
            runtime=run.runtime,
        )
        _fill_layers(report, [ps.name for ps in self.probe_sets], self.config)
        if self.risk is not None and run.evidence is not None:
            t = time.perf_counter()
            report.risk = assess(report, self.risk, run.evidence, self.base.tokenizer, self.imported_labels)
            timings["risk_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        _refuse_nan_results(report)
        return report


def _refuse_non_finite_sums(sums: AuditSums, ft_name: str) -> None:
    """Stop before a report is built from sums holding NaN or infinity. The captured activations
    are checked as they are read (capture.gather), so this catches what enters later: SAE codes
    (an SAE with NaN weights given in code) and their concept projections."""
    bad = sums.non_finite()
    if not bad:
        return
    kind, layer, probe, _ = bad[0]
    source = "the SAE's codes" if kind.startswith(("latent", "concept")) else "the residual statistics"
    places = sorted({(la, p) for _, la, p, _ in bad})
    raise NonFiniteError(
        f"The audit of {ft_name} accumulated non-finite statistics (NaN/Inf) from {source} at layer {layer} on probe "
        f"set {probe!r} ({len(bad)} sum(s) at {len(places)} layer/probe-set pair(s), e.g. {kind} {bad[0][3]}).",
        f"The audit cannot be trusted, so no report was built. The activations were finite, so the SAE for layer {layer} "
        "turned them into NaN/Inf: check its weights (their scale overflows float32, or its encode is broken), or use "
        "another SAE for that layer.",
    )


def _refuse_nan_results(report: AuditReport) -> None:
    """Defence in depth: a NaN in any number of the finished report (layer drift, a latent's
    drift, the risk score) stops the audit rather than print "No drift detected (+nan)" or store
    "nan" in report.json (which writes non-finite numbers as strings)."""
    paths = _nan_paths(report.to_dict(), "")
    if paths:
        raise NonFiniteError(
            f"The audit of {report.ft.get('name', 'the fine-tuned model')} computed NaN for {len(paths)} reported "
            f"number(s) ({', '.join(paths[:5])}{', ...' if len(paths) > 5 else ''}) from finite activations and sums.",
            "The audit cannot be trusted, so no report was written. This is a NeuronLens bug: report it with the "
            "command and the models' names.",
        )


def _nan_paths(obj: Any, path: str) -> list[str]:
    if isinstance(obj, numbers.Real) and not isinstance(obj, numbers.Integral):
        return [path] if math.isnan(float(obj)) else []
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _nan_paths(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _nan_paths(v, f"{path}[{i}]")]
    return []


def _probe_identity(ps: ProbeSet, same: dict[str, str], own: dict[str, str]) -> dict[str, Any]:
    """What the report records about a probe set: its identity and, per read, the sha256 of the
    responses that read used ('same': the base responses both models read; 'own': the fine-tuned
    model's own), so a report and its certificate say which text was read."""
    digests = {read: d[ps.name] for read, d in (("same", same), ("own", own)) if ps.name in d}
    return {**ps.identity(), "responses_sha256": digests} if digests else ps.identity()


def _every_rank(seqs: list[TokenSequence], parallel: DataParallel | None) -> list[TokenSequence]:
    """The sequences of every rank of a data-parallel audit (a collective: every rank calls it
    at the same point), else `seqs`."""
    return seqs if parallel is None else [s for part in parallel.all_gather(seqs) for s in part]


def in_memory_identity(name: str) -> dict[str, Any]:
    """What a report records about a model that exists only in memory (no files to digest)."""
    return {"name": name, "source": "in-memory", "kind": "in-memory", "revision": None, "manifest_sha256": "in-memory", "files": []}


def _prepare_reference(
    base: ModelHandle, sae: SAEArgument, cfg: AuditConfig, metrics: Sequence[str], probe_sets: list[ProbeSet], t_start: float,
    parallel: DataParallel | None = None,
) -> BaseReference:
    """SAEs and layers, imported labels, the probe sequences (base responses, cached) and the risk
    concepts' directions (cached): everything of the base model's half but the base pass. In a
    data-parallel audit, only this rank's prompts; the concept associations are built (and cached)
    by rank 0 first, then read by the others, and the ranks check they hold the same SAEs and
    concept directions."""
    with main_first(parallel):  # SAEs trained when none are cached: once, by rank 0
        sae, audit_layers = _resolve_saes(base, sae, cfg)
    cfg.layers = audit_layers
    imported_labels = merge_imported(cfg.labels, {la: sae[la].d_sae for la in audit_layers}, n_layers=base.n_layers,
                                     hooks={la: sae[la].info.hook_name for la in audit_layers})  # Neuronpedia ids name hooks
    timings = {"validate_s": time.perf_counter() - t_start}

    t = time.perf_counter()
    shard = parallel.spec if parallel is not None else None
    n_prompts = sum(len(shard_indices(len(ps.prompts), shard)) for ps in probe_sets)
    with progress("Base responses to probes", n_prompts) as advance:
        seqs = response_sequences(
            base, probe_sets, cfg.max_new_tokens, token_budget=cfg.token_budget, on_batch=advance, shard=shard, use_cache=base.cacheable
        )
    same_responses = responses_sha256(_every_rank(seqs, parallel))
    timings["base_responses_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with main_first(parallel):
        risk_setup = prepare_risk(base, sae, audit_layers, cfg.concepts) if "misalignment_score" in metrics else None
    timings["concepts_s"] = time.perf_counter() - t
    if parallel is not None:
        parallel.check_same("SAEs and risk concepts", {
            "saes": {str(la): sae[la].digest for la in audit_layers},
            "concepts": None if risk_setup is None else [c.name for c in risk_setup.concepts],
            "directions": None if risk_setup is None else inputs_digest(risk_setup.matrices),
        })
    reads = ["same"] + (["own"] if cfg.own_responses else [])
    return BaseReference(
        base, sae, cfg, probe_sets, risk_setup, imported_labels, reads, timings, parallel=parallel, _seqs=seqs,
        _same_responses=same_responses,
    )


def _inputs_summary(
    base: ModelHandle, ft: ModelHandle, probe_sets: list[ProbeSet], cfg: AuditConfig, metrics: Sequence[str]
) -> dict[str, Any]:
    """What every rank of a data-parallel audit must agree on before the long work starts."""
    return {
        "base": base.digest,
        "ft": ft.digest,
        "probe_sets": [(ps.name, ps.digest) for ps in probe_sets],
        "config": cfg.to_dict(),
        "metrics": list(metrics),
    }


# -- validation --------------------------------------------------------------------------------


def preflight(base: ModelHandle, ft: ModelHandle, cfg: AuditConfig, metrics: Sequence[str] = METRICS) -> list[ProbeSet]:
    """Every cheap check of an audit's inputs (no weights loaded, nothing generated); returns the
    probe sets. The CLI runs it before loading or training SAEs."""
    metrics = _check_metrics(metrics)
    _check_compatible(base, ft)
    return _preflight_settings(base, cfg, metrics, ft)


def _check_metrics(metrics: Sequence[str] | str) -> list[str]:
    """`metrics` as a list (one name given as a string is one metric, not its letters)."""
    if isinstance(metrics, str):
        metrics = [metrics]
    try:
        names = list(metrics)
    except TypeError:
        raise ConfigError(
            f"metrics={metrics!r} (type {type(metrics).__name__}) is not a list of metric names.", f"Use any of {list(METRICS)}."
        ) from None
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ConfigError(f"Unknown metric(s) {unknown}.", f"Use any of {list(METRICS)}.")
    return names


def _check_prompt_lengths(probe_sets: list[ProbeSet], cfg: AuditConfig, handles: list[ModelHandle]) -> None:
    """Every audited prompt, chat-templated, plus the response budget against the shortest context
    of the models (a ProbeError naming the prompts that do not fit), before SAEs are loaded or
    trained and before anything is generated."""
    context = min((c for c in map(handle_context, handles) if c is not None), default=None)
    for ps in probe_sets:
        checked_prompt_ids(handles[0].tokenizer, ps, range(len(ps.prompts)), cfg.max_new_tokens, context)


def _preflight_settings(base: ModelHandle, cfg: AuditConfig, metrics: Sequence[str], ft: ModelHandle | None = None) -> list[ProbeSet]:
    cfg.validate(base.n_layers)
    if "misalignment_score" in metrics:
        load_concepts(cfg.concepts)  # a malformed concept file fails here, before any long work
    # a malformed label file (or one for another model's layers) too: before SAEs are trained; only
    # the latent range waits for the SAEs' widths (checked right after they are resolved)
    check_label_files(cfg.labels or [], base.n_layers)
    probe_sets = _load_probe_sets(cfg)
    _check_prompt_lengths(probe_sets, cfg, [base] if ft is None else [base, ft])
    return probe_sets


def _check_compatible(base: ModelHandle, ft: ModelHandle) -> None:
    check_fine_tune_fits(base, ft)  # architecture (and an adapter's shapes): equal sizes do not make a GPT-2 a Llama fine-tune
    if base.n_layers != ft.n_layers or base.d_model != ft.d_model:
        raise ModelLoadError(
            f"Base ({base.name}: {base.n_layers} layers, d_model {base.d_model}) and fine-tuned "
            f"({ft.name}: {ft.n_layers} layers, d_model {ft.d_model}) have different architectures.",
            "Audit a fine-tune against the base model it was fine-tuned from.",
        )
    bt, ftok = base.tokenizer, ft.tokenizer
    if len(bt) != len(ftok) or bt.get_vocab() != ftok.get_vocab():
        raise ModelLoadError(
            f"Base and fine-tuned models use different tokenizers/vocabularies ({len(bt)} vs {len(ftok)} tokens).",
            "Both models must share one tokenizer: audit a fine-tune against its own base model.",
        )


def _resolve_saes(base: ModelHandle, sae: SAEArgument, cfg: AuditConfig) -> tuple[SAESet, list[int]]:
    """The SAEs to use (`sae=` as given, or shipped, cached or trained when None) and the audited
    layers, checked against each other and against the model."""
    sae = as_sae_set(sae, base, cfg.layers or None)
    layers = sorted(cfg.layers or sae.layers)
    missing = [layer for layer in layers if layer not in sae]
    if missing:
        raise ConfigError(
            f"No SAE was given for layer(s) {missing} (SAEs cover {sae.layers}).",
            "Audit only the SAEs' layers, or load SAEs for the missing layers.",
        )
    for layer in layers:
        if sae[layer].info.d_in != base.d_model:
            raise ConfigError(
                f"The SAE for layer {layer} has d_in {sae[layer].info.d_in}, the model has d_model {base.d_model}.",
                "Use SAEs trained on this model.",
            )
    return sae, layers


def _load_probe_sets(cfg: AuditConfig) -> list[ProbeSet]:
    sets = [load_probe_set(p, cfg.max_prompts_per_set) for p in cfg.probes]
    names = [s.name for s in sets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"Probe set name(s) {dupes} appear twice.", "Give each probe file a distinct name.")
    for s in sets:
        if "|" in s.name:
            raise ConfigError(f"Probe set name {s.name!r} contains '|'.", "Rename the file without '|'.")
        if len(s.prompts) < 2:
            raise ConfigError(f"Probe set {s.name!r} has {len(s.prompts)} prompt(s).", "Give each set at least 2 prompts.")
    return sets


# -- residency ---------------------------------------------------------------------------------


def _shares_base_weights(base: ModelHandle, ft: ModelHandle) -> bool:
    return ft.kind == "peft" and ft.base is not None and ft.base.digest == base.digest and not ft.is_loaded


@contextmanager
def _resident(handle: ModelHandle, *, keep: bool) -> Iterator[nn.Module]:
    model = handle.model
    try:
        yield model
    finally:
        if not keep:
            handle.release()


@contextmanager
def _adapter_on(base_nn: nn.Module, ft: ModelHandle) -> Iterator[nn.Module]:
    """`ft`'s PEFT adapter injected into the resident base weights; removed again on exit, which
    restores the base model exactly."""
    from peft import PeftModel

    with peft_wrap_quietly():  # peft reads transformers' deprecated is_gradient_checkpointing
        peft_model = PeftModel.from_pretrained(base_nn, str(ft.path), is_trainable=False)
    peft_model.eval()
    try:
        yield peft_model
    finally:
        peft_model.unload()


# -- passes ------------------------------------------------------------------------------------


RECONSTRUCTION_STRIDE = 4
"""The SAE's reconstruction of the base residuals is checked on every 4th measured token: a
decode costs about as much as an encode, and 3,500 of the default audit's 14,000 tokens pin the
FVU down far more finely than the 0.5 it is held against."""


def probe_fvu_warnings(sums: AuditSums, layers: list[int], max_fvu: float) -> list[str]:
    """Why an SAE is too poor to trust on this audit's own text (empty when every audited layer's
    reconstruction of the base residuals leaves at most `max_fvu` of their variance unexplained):
    an SAE loaded without recorded quality is otherwise never measured."""
    out = []
    for layer in layers:
        total = sums.recon_total(layer)
        if total is not None and total.n > 0 and exceeds(total.fvu, max_fvu):  # a NaN FVU is a warning too
            what = "explains too little of the base model's residual stream on the probes"
            out.append(quality_warning(layer, what, "FVU", total.fvu, ".2f", f"{max_fvu}, measured in this audit"))
    return out


def _prompt_keys(batch: Batch) -> tuple[torch.Tensor, list[str]]:
    """For each measured token: which prompt it belongs to (its batch row: one row is one
    prompt's sequence) and that prompt's probe set."""
    return batch.row.clone(), [batch.sequences[r].probe_set for r in batch.row.tolist()]


def _split_by_probe(probes: list[str], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, list[int]] = {}
    for i, (p, k) in enumerate(zip(probes, keep.tolist())):
        if k:
            out.setdefault(p, []).append(i)
    return {p: torch.tensor(ix, dtype=torch.long) for p, ix in out.items()}


@dataclass
class _Accumulator:
    """Adds one batch's SAE codes to every statistic the audit keeps: latent sums, residual
    sums, concept-projection sums (with risk scoring) and token-level evidence."""

    sae: SAESet
    sums: AuditSums
    risk: RiskSetup | None
    evidence: EvidenceStore | None
    own_base_means: dict[tuple[str, int, tuple[str, int]], torch.Tensor] = field(default_factory=dict)

    def chunk_tokens(self, layer: int) -> int:
        """Most tokens encoded at once at `layer`: dense codes and their float64 statistics
        temporaries are tokens x d_sae, several GB for a 4,096-token batch and a 16k-latent SAE."""
        return code_chunk_tokens(self.sae[layer].d_sae)

    def paired(self, layer: int, bb: _BaseBatch, xf: torch.Tensor) -> None:
        """Base and fine-tuned residuals of the same tokens ('same' read)."""
        for sub, ix in row_chunks(bb.batch, self.chunk_tokens(layer)):
            self._paired(layer, sub, bb.resid[layer][ix], xf[ix], bb.keep[layer][ix])

    def _paired(self, layer: int, batch: Batch, xb: torch.Tensor, xf: torch.Tensor, keep: torch.Tensor) -> None:
        key, probes = _prompt_keys(batch)
        sae = self.sae[layer]
        cb, cf = sae.encode(xb), sae.encode(xf)
        for probe, ix in _split_by_probe(probes, keep).items():
            self.sums.latent("same", layer, probe, sae.d_sae).add_paired(cb[ix], cf[ix], key[ix])
            self.sums.resid(layer, probe).add(xb[ix], xf[ix])
            sub = ix[::RECONSTRUCTION_STRIDE]
            self.sums.reconstruction(layer, probe, sae.info.d_in).add(xb[sub], sae.decode(cb[sub]))
            if self.risk is not None:
                pb, pf = self.risk.project(layer, cb[ix]), self.risk.project(layer, cf[ix])
                self.sums.concept("same", layer, probe, len(self.risk.names)).add_paired(pb, pf, key[ix])
        self._keep_evidence("same", layer, batch, keep, cb, cf)

    def one_side(self, read: str, side: str, layer: int, batch: Batch, x: torch.Tensor, keep: torch.Tensor) -> None:
        """One model's residuals (the 'own' read, where the two models read different text). The
        base side's per-prompt means are kept so that the fine-tuned side can be paired with them
        prompt by prompt (same prompt, different responses)."""
        for sub, ix in row_chunks(batch, self.chunk_tokens(layer)):
            self._one_side(read, side, layer, sub, x[ix], keep[ix])

    def _one_side(self, read: str, side: str, layer: int, batch: Batch, x: torch.Tensor, keep: torch.Tensor) -> None:
        key, probes = _prompt_keys(batch)
        codes = self.sae[layer].encode(x)
        for probe, ix in _split_by_probe(probes, keep).items():
            stats = [(self.sums.latent(read, layer, probe, self.sae[layer].d_sae), codes[ix], "latent")]
            if self.risk is not None:
                proj = self.risk.project(layer, codes[ix])
                stats.append((self.sums.concept(read, layer, probe, len(self.risk.names)), proj, "concept"))
            for sums, values, kind in stats:
                rows, means = sums.add_side(side, values, key[ix])
                prompt_ids = [(probe, batch.sequences[int(r)].prompt_index) for r in rows]
                if side == "base":
                    for pid, m in zip(prompt_ids, means):
                        self.own_base_means[(kind, layer, pid)] = m
                else:
                    pairs = [(m, self.own_base_means.get((kind, layer, pid))) for pid, m in zip(prompt_ids, means)]
                    diffs = [m - b for m, b in pairs if b is not None]
                    if diffs:
                        sums.add_prompt_diffs(torch.stack(diffs))
        if side == "ft":
            self._keep_evidence(read, layer, batch, keep, None, codes)

    def _keep_evidence(
        self, read: str, layer: int, batch: Batch, keep: torch.Tensor, cb: torch.Tensor | None, cf: torch.Tensor
    ) -> None:
        if self.evidence is None:
            return
        token_ids = batch.input_ids[batch.row, batch.col]
        for r, seq in enumerate(batch.sequences):
            sel = torch.nonzero((batch.row == r) & keep).squeeze(1)
            if sel.numel() == 0:
                continue
            self.evidence.add(
                read, layer, seq.probe_set, seq.prompt_index, token_ids[sel].tolist(),
                None if cb is None else cb[sel], cf[sel],
            )


def _base_forward(model: nn.Module, batches: list[Batch], layers: list[int], name: str) -> list[dict[int, torch.Tensor]]:
    """The base model's residuals at `layers` on the measured tokens of every batch (`name`: the
    model, as an error about non-finite activations names it)."""
    device = next(model.parameters()).device
    out: list[dict[int, torch.Tensor]] = []
    with progress("Base model pass", sum(len(b.sequences) for b in batches)) as advance:
        for batch in batches:
            resid = run_to_layers(model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
            out.append({layer: gather(resid[layer], batch, layer=layer, model=name) for layer in layers})
            advance(len(batch.sequences))
    return out


def _accumulate_base(
    batches: list[Batch], resid: list[dict[int, torch.Tensor]], layers: list[int], cfg: AuditConfig, acc: _Accumulator,
    reads: list[str],
) -> list[_BaseBatch]:
    """Encode the base residuals, add the base side of the 'own' read, and keep what the paired
    fine-tuned pass needs."""
    kept: list[_BaseBatch] = []
    for batch, x in zip(batches, resid):
        keep = {layer: massive_keep(x[layer], cfg.massive_activation_factor) for layer in layers}
        if "own" in reads:  # the base model's own responses are exactly these sequences
            for layer in layers:
                acc.one_side("own", "base", layer, batch, x[layer], keep[layer])
        kept.append(_BaseBatch(batch, x, keep))
    return kept


def _ft_pass(model: nn.Module, base_batches: list[_BaseBatch], layers: list[int], acc: _Accumulator, name: str) -> None:
    device = next(model.parameters()).device
    with progress("Fine-tuned model pass", sum(len(b.batch.sequences) for b in base_batches)) as advance:
        for bb in base_batches:
            b = bb.batch
            resid = run_to_layers(model, b.input_ids.to(device), b.attention_mask.to(device), layers)
            for layer in layers:
                acc.paired(layer, bb, gather(resid[layer], b, layer=layer, model=name))
            advance(len(b.sequences))


@dataclass
class _ModelView:
    """The three things response generation needs, for a model that may not have a handle of its
    own (an adapter injected into shared base weights)."""

    digest: str
    tokenizer: Any
    model: nn.Module
    name: str = "the fine-tuned model"
    """How errors name it."""


def _own_pass(
    view: _ModelView, probe_sets: list[ProbeSet], layers: list[int], cfg: AuditConfig, acc: _Accumulator, pad_id: int,
    *, use_cache: bool = True, shard: tuple[int, int] | None = None,
) -> list[TokenSequence]:
    """Read the fine-tuned model on its own greedy responses, paired with the base read by prompt;
    returns the sequences it read. `use_cache=False` for a model whose weights change under the same digest (one in training).
    `shard`: a data-parallel rank's prompts, the same ones its base pass read (so that each
    prompt's base mean, kept by that pass, is on this rank)."""
    n_prompts = sum(len(shard_indices(len(ps.prompts), shard)) for ps in probe_sets)
    with progress("Fine-tuned responses to probes", n_prompts) as advance:
        seqs = response_sequences(
            view, probe_sets, cfg.max_new_tokens, token_budget=cfg.token_budget, use_cache=use_cache, on_batch=advance,
            shard=shard,
        )
    device = next(view.model.parameters()).device
    with progress("Fine-tuned model on its own responses", len(seqs)) as advance:
        for batch in make_batches(seqs, cfg.positions, cfg.token_budget, pad_id):
            resid = run_to_layers(view.model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
            for layer in layers:
                x = gather(resid[layer], batch, layer=layer, model=view.name)
                acc.one_side("own", "ft", layer, batch, x, massive_keep(x, cfg.massive_activation_factor))
            advance(len(batch.sequences))
    return seqs


# -- report ------------------------------------------------------------------------------------


def _fill_layers(report: AuditReport, probe_names: list[str], cfg: AuditConfig) -> None:
    assert report.sums is not None
    for layer in cfg.layers or []:
        total = residual_drift(report.sums.resid_total(layer))
        by_probe = {p: residual_drift(report.sums.resid_total(layer, [p]))["drift"] for p in probe_names}
        table = report.drift_table(layer)
        report.layers.append(
            LayerDrift(
                layer=layer,
                drift=total["drift"],
                cosine=total["cosine"],
                relative_rms=total["relative_rms"],
                n_tokens=total["n_tokens"],
                by_probe=by_probe,
                n_significant_latents=sum(f.significant for f in table),
                n_latents=len(table),
            )
        )
        report.top[layer] = rank_features(table)[: cfg.top_k_saved]


__all__ = ["METRICS", "BaseReference", "compare_models", "in_memory_identity", "preflight", "prepare_reference"]
