"""The audit, top to bottom: plan -> base reference (probe sequences, concepts, base pass) ->
fine-tuned run -> report. Orchestration only: every stage lives in a module of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..config import AuditConfig
from ..errors import ConfigError, ModelLoadError, NeuronLensError
from ..models import ModelHandle, load_model
from ..report import AuditReport
from ..saes import SAEArgument
from ._plan import METRICS, _warn_same_files, check_metrics, plan_audit, preflight, settings
from ._learned import LensStage
from ._preference import PreferenceStage
from ._reference import BaseReference, FineTunedRun
from ._residency import ModelView, adapter_off, adapter_on, resident, shares_base_weights
from ._timing import StageTimes, now

if TYPE_CHECKING:
    from .._distributed import DataParallel


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
    sparsify SAEs (or any other source :func:`load_sae` takes), a dict {layer: SparseAutoencoder
    or folder}, or None (:func:`load_sae`'s shipped, cached or trained SAEs for the audited layers).
    `probes`: built-in probe-set names or prompt files (default: every built-in set).
    `metrics`: 'drift' always; 'misalignment_score' adds the risk stage (concept shifts, risky
    features, score and verdict). `config` holds every other setting (:class:`AuditConfig`);
    `layers` overrides its layers. Handles passed unloaded are loaded one at a time and released
    afterwards unless `keep_both`. `parallel` (from :func:`neuronlens._distributed.launch_from_env`):
    a data-parallel audit; every rank calls this with the same arguments, measures its share of
    the prompts, and gets the same report, computed from the all-reduced sums.
    `cache_base_pass`: reuse (and store) the base model's residuals on the probe tokens, keyed by
    everything they depend on, so auditing several fine-tunes of one base runs the base model once
    (a full-weight fine-tune then loads the base weights only for the stages that read the base
    model itself: the learned lens, unless its result for this pair is cached, and the amplified read).
    """
    t_start = now()
    cfg = settings(config, probes, layers)
    base, ft = _handle(base_model), _handle(ft_model)
    base_loaded_before = base.is_loaded
    plan = plan_audit(base, sae, cfg, metrics, ft=ft, parallel=parallel)  # every check, before any long work
    ref = BaseReference.prepare(base, plan, StageTimes().since("validate_s", t_start), parallel)
    lens = LensStage.prepare(base, ft, ref.config, parallel)  # its texts: while the base is resident for its responses
    pref = PreferenceStage.prepare(base, ft, ref.config, parallel)
    # (no `with ... as model` binding in this frame: it would keep a released model alive)
    if shares_base_weights(base, ft):
        ref.measure_base(lambda: resident(base, keep=True), use_cache=cache_base_pass)
        run = _measure_adapter(ref, base, ft, lens=lens, pref=pref)
    else:
        ref.measure_base(lambda: resident(base, keep=keep_both or base_loaded_before), use_cache=cache_base_pass)
        run = _measure_resident(ref, base, ft, keep=keep_both or ft.is_loaded, lens=lens, pref=pref)
    if not (keep_both or base_loaded_before):
        base.release()
    return ref.report(run, ft.identity, t_start, lens.result(), pref.result())


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
    t_start = now()
    cfg = settings(config, probes, layers)
    base = _handle(base_model)
    loaded_before = base.is_loaded
    plan = plan_audit(base, sae, cfg, metrics)
    ref = BaseReference.prepare(base, plan, StageTimes().since("validate_s", t_start))
    ref.measure_base(lambda: resident(base, keep=loaded_before), use_cache=cache_base_pass)
    return ref


def compare_many(
    base_model: ModelHandle | str,
    ft_models: Sequence[ModelHandle | str],
    sae: SAEArgument = None,
    probes: Sequence[str] | None = None,
    metrics: Sequence[str] = METRICS,
    *,
    config: AuditConfig | None = None,
    layers: Sequence[int] | None = None,
    cache_base_pass: bool = True,
    on_report: Callable[[int, AuditReport], None] | None = None,
    on_error: Callable[[int, NeuronLensError], None] | None = None,
) -> list[AuditReport]:
    """Audit every model of `ft_models` (e.g. the checkpoints of one training run) against one
    pass of `base_model`; return their reports in the order given. Arguments as in
    :func:`compare_models`; each report equals the one :func:`compare_models` gives that
    fine-tune alone (its numbers; timings aside).

    Every fine-tune is checked (architecture, tokenizer, adapter shapes, prompt lengths against
    its context) before the base model runs: a broken one is refused, named by its position and
    source, before any long work. The base model's half (probe responses, concepts, base pass)
    runs once; then the fine-tunes are measured one at a time, each with every one-side read.
    With lazily-loaded handles one model is resident at a time: the PEFT adapters on the audited
    base are measured first, injected into its resident weights one after the other (as
    :func:`compare_models` does), then each full-weight fine-tune is loaded, measured and
    released. A model that fails only when its weights load (NaN or infinite weights, say a
    diverged checkpoint) stops the whole run, unless `on_error` is given: then the error (naming
    the fine-tune) is handed to ``on_error(index, error)``, that fine-tune gets no report and the
    others are audited.
    Each report's ``timings`` hold the shared base stages and its own; its ``total_s`` is the
    shared seconds plus its own (what its audit cost with the base half counted once).
    `on_report(index, report)`, when given, is called as each fine-tune's report is done (index
    in `ft_models`; adapters on the base come first), e.g. to save it while the next one runs."""
    t_start = now()
    cfg = settings(config, probes, layers)
    base = _handle(base_model)
    fts = _preflight_all(base, ft_models, cfg, metrics)  # every fine-tune, before any long work
    base_loaded_before = base.is_loaded
    plan = plan_audit(base, sae, cfg, metrics)
    ref = BaseReference.prepare(base, plan, StageTimes().since("validate_s", t_start))
    lenses = [LensStage.prepare(base, ft, ref.config) for ft in fts]  # texts generated once (cached), the base resident
    prefs = [PreferenceStage.prepare(base, ft, ref.config) for ft in fts]  # the base's read: once, then from the cache
    shared = [shares_base_weights(base, ft) for ft in fts]
    ref.measure_base(lambda: resident(base, keep=base_loaded_before or any(shared)), use_cache=cache_base_pass)
    base_s = now() - t_start  # the shared half, counted once in every report's total_s
    reports = _measure_each(ref, base, fts, lenses, prefs, shared, keep_base=base_loaded_before, base_s=base_s,
                            on_report=on_report, on_error=on_error)
    if not base_loaded_before:
        base.release()
    return reports


def _measure_each(ref: BaseReference, base: ModelHandle, fts: list[ModelHandle], lenses: list[LensStage],
                  prefs: list[PreferenceStage], shared: list[bool], *,
                  keep_base: bool, base_s: float, on_report: Callable[[int, AuditReport], None] | None,
                  on_error: Callable[[int, NeuronLensError], None] | None) -> list[AuditReport]:
    """compare_many's fine-tuned half: each fine-tune measured against `ref` and reported, the
    adapters on the resident base first; the reports in the order of `fts`."""
    reports: list[AuditReport | None] = [None] * len(fts)
    order = sorted(range(len(fts)), key=lambda i: not shared[i])  # adapters first: the base is resident
    for k, i in enumerate(order):
        t_ft, last = now(), k == len(order) - 1  # the last one may consume the base pass
        try:
            with _naming(i, len(fts), fts[i]):
                run = _measure_one(ref, base, fts[i], shared=shared[i], keep_base=keep_base, consume=last, lens=lenses[i],
                                   pref=prefs[i])
        except ModelLoadError as exc:  # found only as its weights load: nothing of it was measured
            if on_error is None:
                raise
            on_error(i, exc)
            continue
        reports[i] = report = ref.report(run, fts[i].identity, t_ft - base_s, lenses[i].result(), prefs[i].result())
        if on_report is not None:
            on_report(i, report)
    return [r for r in reports if r is not None]


def _preflight_all(base: ModelHandle, ft_models: Sequence[ModelHandle | str], cfg: AuditConfig,
                   metrics: Sequence[str]) -> list[ModelHandle]:
    """Every fine-tune resolved and checked against `base` (no weights loaded); a failure names
    which fine-tune it was."""
    if isinstance(ft_models, (str, ModelHandle)) or not isinstance(ft_models, Sequence):
        raise ConfigError(f"ft_models={ft_models!r:.80} is not a list of fine-tuned models.",
                          "Pass a list, e.g. compare_many(base, ['./ckpt-100', './ckpt-200']) (compare_models audits one).")
    if not ft_models:
        raise ConfigError("compare_many was given no fine-tuned models.", "Pass at least one fine-tuned model.")
    metrics = check_metrics(metrics)
    fts = []
    for i, model in enumerate(ft_models):
        with _naming(i, len(ft_models), model):
            ft = _handle(model)
            preflight(base, ft, cfg, metrics)
        _warn_same_files(base, ft)
        fts.append(ft)
    return fts


@contextmanager
def _naming(i: int, n: int, model: ModelHandle | str) -> Iterator[None]:
    """Re-raise a NeuronLensError from checking fine-tune `i` with which one it was in front."""
    try:
        yield
    except NeuronLensError as exc:
        source = model.source if isinstance(model, ModelHandle) else str(model)
        raise type(exc)(f"Fine-tune {i + 1} of {n} ({source}): {exc.problem}", exc.fix) from exc


def _handle(model: ModelHandle | str) -> ModelHandle:
    return model if isinstance(model, ModelHandle) else load_model(model)


def _measure_one(ref: BaseReference, base: ModelHandle, ft: ModelHandle, *, shared: bool, keep_base: bool, consume: bool,
                 lens: LensStage, pref: PreferenceStage) -> FineTunedRun:
    """One fine-tune's passes: an adapter on the resident base, or a model of its own (the base
    released first, one model resident at a time, unless the caller had it loaded)."""
    if shared:
        return _measure_adapter(ref, base, ft, consume=consume, lens=lens, pref=pref)
    if not keep_base:
        base.release()
    return _measure_resident(ref, base, ft, keep=ft.is_loaded, consume=consume, lens=lens, pref=pref)


def _measure_adapter(ref: BaseReference, base: ModelHandle, ft: ModelHandle, *, consume: bool = True,
                     lens: LensStage | None = None, pref: PreferenceStage | None = None) -> FineTunedRun:
    """The fine-tuned passes of a PEFT adapter injected into the resident base weights (`consume`:
    the last measurement against `ref`, see :meth:`BaseReference.measure`); the lens and the
    preference read, first, on the same module with the adapter on and off."""
    with adapter_on(base.model, ft) as ft_nn:
        view = ModelView(ft.digest, ft.tokenizer, ft_nn, f"the fine-tuned model {ft.name}")
        if lens is not None:
            lens.read_ft(ft_nn)
            lens.finish_adapter(ft_nn)
        if pref is not None:
            pref.read_ft(ft_nn)
            pref.finish_adapter(ft_nn)
        return ref.measure(ft_nn, view, consume=consume, base_reader=lambda: adapter_off(ft_nn))


def _measure_resident(ref: BaseReference, base: ModelHandle, ft: ModelHandle, *, keep: bool, consume: bool = True,
                      lens: LensStage | None = None, pref: PreferenceStage | None = None) -> FineTunedRun:
    """The fine-tuned passes of a model with weights of its own (released afterwards unless `keep`);
    the lens's and the preference read's base sides after it, on the base model (loaded for them
    unless already resident; the preference read needs it only when the base's read is not cached)."""
    with resident(ft, keep=keep) as ft_nn:
        view = ModelView(ft.digest, ft.tokenizer, ft_nn, f"the fine-tuned model {ft.name}")
        if lens is not None:
            lens.read_ft(ft_nn)
        if pref is not None:
            pref.read_ft(ft_nn)
        run = ref.measure(ft_nn, view, consume=consume, base_reader=lambda: resident(base, keep=True))
    if (lens is not None and lens.pending) or (pref is not None and pref.needs_base()):
        with resident(base, keep=True) as base_nn:
            if lens is not None:
                lens.finish(base_nn)
            if pref is not None:
                pref.finish(base_nn)
    return run
