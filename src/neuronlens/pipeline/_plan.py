"""The audit plan: every input checked once, before any long work, and the settings resolved.

One fault, one error type: settings (layer range included) are :class:`ConfigError`; an SAE that
does not fit the model is :class:`SAEError`; models that cannot be compared are
:class:`ModelLoadError`; prompts that do not fit the context are :class:`ProbeError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .._distributed import main_first
from ..config import AuditConfig, check_probes
from ..errors import ConfigError, ModelLoadError, SAEError
from ..models import ModelHandle, check_fine_tune_fits
from ..probes import ProbeSet, checked_prompt_ids, handle_context, load_probe_set
from ..risk import check_label_files, load_concepts, merge_imported
from ..saes import SAEArgument, SAESet, as_sae_set
from ._reads import check_score_reads, reads_of

if TYPE_CHECKING:
    from .._distributed import DataParallel

METRICS = ("drift", "misalignment_score")


@dataclass(frozen=True)
class AuditPlan:
    """What an audit will do, every part of it checked: the first stage result."""

    config: AuditConfig
    """The validated settings with the audited layers resolved (a copy of the caller's)."""
    probe_sets: tuple[ProbeSet, ...]
    sae: SAESet
    metrics: tuple[str, ...]
    imported_labels: Mapping[tuple[int, int], tuple[str, str]]
    """(layer, latent) -> (label, source) from the config's label files."""

    @property
    def layers(self) -> list[int]:
        return list(self.config.layers or [])

    @property
    def reads(self) -> tuple[str, ...]:
        """'same', then every one-side read the settings turn on (see :mod:`._reads`)."""
        return reads_of(self.config)

    @property
    def scores_risk(self) -> bool:
        return "misalignment_score" in self.metrics


def plan_audit(
    base: ModelHandle, sae: SAEArgument, config: AuditConfig, metrics: Sequence[str] | str = METRICS, *,
    ft: ModelHandle | None = None, parallel: DataParallel | None = None,
) -> AuditPlan:
    """Check everything (:func:`preflight`), then resolve the SAEs (given, shipped, cached or
    trained: once, by rank 0 of a data-parallel audit) and the label files against them. `ft`:
    the fine-tuned model, when there is one to check against the base."""
    metrics = check_metrics(metrics)
    probe_sets = preflight_settings(base, config, metrics, ft) if ft is None else preflight(base, ft, config, metrics)
    if ft is not None:
        _warn_same_files(base, ft)
        if parallel is not None:
            parallel.check_same("inputs", _inputs_summary(base, ft, probe_sets, config, metrics))
    with main_first(parallel):  # SAEs trained when none are cached: once, by rank 0
        saes, layers = resolve_saes(base, sae, config)
    imported = merge_imported(config.labels, {la: saes[la].d_sae for la in layers}, n_layers=base.n_layers,
                              hooks={la: saes[la].info.hook_name for la in layers})  # Neuronpedia ids name hooks
    return AuditPlan(replace(config, layers=layers), tuple(probe_sets), saes, tuple(metrics), imported)


def settings(config: AuditConfig | None, probes: Sequence[str] | None, layers: Sequence[int] | None) -> AuditConfig:
    """A copy of `config` (default settings when None) with `probes` and `layers` applied."""
    if config is not None and not isinstance(config, AuditConfig):  # a dict failed as a raw TypeError in replace()
        raise ConfigError(f"config={config!r:.80} (type {type(config).__name__}) is not an AuditConfig.",
                          "Pass config=AuditConfig(...) (AuditConfig(**settings) or AuditConfig.from_dict(settings) for a dict), or None.")
    cfg = replace(config or AuditConfig())
    if probes is not None:
        cfg.probes = check_probes(probes)  # "finance" is one set, not the sets 'f', 'i', 'n', ...
    if layers is not None:
        cfg.layers = list(layers)
    return cfg


def preflight(base: ModelHandle, ft: ModelHandle, cfg: AuditConfig, metrics: Sequence[str] = METRICS) -> list[ProbeSet]:
    """Every cheap check of an audit's inputs (no weights loaded, nothing generated); returns the
    probe sets. :func:`plan_audit` runs it before loading or training SAEs."""
    metrics = check_metrics(metrics)
    _check_compatible(base, ft)
    return preflight_settings(base, cfg, metrics, ft)


def preflight_settings(base: ModelHandle, cfg: AuditConfig, metrics: Sequence[str], ft: ModelHandle | None = None) -> list[ProbeSet]:
    """The checks of the settings, concept and label files and probe sets against `base` (and `ft`)."""
    cfg.validate(base.n_layers)
    if "misalignment_score" in metrics:
        load_concepts(cfg.concepts)  # a malformed concept file fails here, before any long work
        check_score_reads(cfg)
    # a malformed label file (or one for another model's layers) too: before SAEs are trained; only
    # the latent range waits for the SAEs' widths (checked right after they are resolved)
    check_label_files(cfg.labels or [], base.n_layers)
    probe_sets = _load_probe_sets(cfg)
    _check_prompt_lengths(probe_sets, cfg, [base] if ft is None else [base, ft])
    return probe_sets


def check_metrics(metrics: Sequence[str] | str) -> list[str]:
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


def resolve_saes(base: ModelHandle, sae: SAEArgument, cfg: AuditConfig) -> tuple[SAESet, list[int]]:
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
            raise SAEError(
                f"The SAE for layer {layer} has d_in {sae[layer].info.d_in}, the model has d_model {base.d_model}.",
                "Use SAEs trained on this model.",
            )
    return sae, layers


def _warn_same_files(base: ModelHandle, ft: ModelHandle) -> None:
    if base.digest == ft.digest:  # e.g. the same folder twice: the audit runs, and can only find no drift
        warnings.warn(f"The fine-tuned model {ft.name} has the same files as the base model {base.name} (manifest sha256 "
                      f"{ft.digest[:12]}...): it is audited against itself, so no drift can show. Check which models "
                      "were given (--base and --ft).", stacklevel=4)  # the caller of compare_models


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


def _check_prompt_lengths(probe_sets: list[ProbeSet], cfg: AuditConfig, handles: list[ModelHandle]) -> None:
    """Every audited prompt, chat-templated, plus the response budget against the shortest context
    of the models (a ProbeError naming the prompts that do not fit), before SAEs are loaded or
    trained and before anything is generated."""
    context = min((c for c in map(handle_context, handles) if c is not None), default=None)
    for ps in probe_sets:
        checked_prompt_ids(handles[0].tokenizer, ps, range(len(ps.prompts)), cfg.max_new_tokens, context)


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
