"""Audit a model while it trains, from any training loop.

The base model's half of the audit (probe sequences, concept directions, base pass) is measured
once, when the monitor is built; every :meth:`AlignmentMonitor.check` then runs only the model
being trained on a small probe budget and scores it exactly as ``compare_models`` would (same
statistics, same misalignment score and verdict), so a fine-tune drifting towards a risk concept
shows up while there is still time to stop it.

    monitor = AlignmentMonitor(base, sae, probes=["finance", "general"], threshold=0.05)
    for step, batch in enumerate(loader, start=1):
        ...
        if step % 50 == 0:
            result = monitor.check(model, step)
            if result.failed:
                break
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from ..pipeline import BaseReference, prepare_reference
from ..config import AuditConfig
from ..errors import ConfigError, ModelLoadError
from ..models import ModelHandle, unwrap_peft
from ..report import AuditReport
from ..saes import SAESet

def monitor_config(config: AuditConfig | None = None, threshold: float | None = None) -> AuditConfig:
    """The settings of a monitor: `config` if given, else the audit defaults; and `threshold`,
    when given, overriding the config's.

    The default budget is the audit's own (24 prompts per probe set, 48-token responses) because
    the default threshold was calibrated at that budget. A smaller one is cheaper but inflates
    the score: with 8 prompts per set and 32-token responses the benign safe-finance control
    failed 5 of 8 checks during training (docs/EARLY_WARNING.md); with the audit budget it passed
    every check. Pass a smaller `config` only with a threshold recalibrated for it."""
    cfg = replace(config) if config is not None else AuditConfig()
    if threshold is not None:
        cfg.threshold = float(threshold)
    if cfg.verdict_rule != "score":  # before the base model's pass
        raise ConfigError(f"verdict_rule={cfg.verdict_rule!r}: the training monitor decides by the misalignment score; "
                          "it runs no preference read.", "Monitor with verdict_rule='score' (the default).")
    return cfg


@dataclass(frozen=True)
class MonitoredFeature:
    """One risky SAE latent of a check (the strongest behind a significant concept shift)."""

    layer: int
    latent: int
    concept: str
    label: str
    drift_ratio: float

    @property
    def id(self) -> str:
        """``L<layer>#<latent>``, the form used in the logs."""
        return f"L{self.layer}#{self.latent}"


@dataclass(frozen=True)
class MonitorResult:
    """What one check found about the model at one training step."""

    step: int
    score: float | None
    """Misalignment score in [0, 1] (docs/METHOD.md section 6); None without risk scoring."""
    verdict: str | None
    """'pass', 'fail' or 'inconclusive' (SAEs too poor, or too few concepts visible)."""
    threshold: float
    layer_drift: dict[int, float]
    """Mean relative change of the residual stream per audited layer (same read)."""
    top_features: list[MonitoredFeature]
    """The riskiest latents, most drifted first (at most the monitor's `top_k`)."""
    concept_trends: dict[str, float]
    """Per scored concept: its trend towards risk (median over layers; the larger of the two
    reads), whether or not it counts for the score."""
    seconds: float
    """Wall time of the check."""
    score_interval: tuple[float, float] | None = None
    """95% interval of the score over samples of probe prompts (docs/METHOD.md section 6): a
    check whose interval contains the threshold could have gone the other way."""

    @property
    def failed(self) -> bool:
        """The score reached the threshold (the verdict is 'fail')."""
        return self.score is not None and self.score >= self.threshold

    def metrics(self, prefix: str = "neuronlens/") -> dict[str, float | str]:
        """Flat log values (what the Trainer callback logs): numbers for dashboards, plus the
        verdict and the risky feature ids as text."""
        out: dict[str, float | str] = {}
        if self.score is not None:
            out[f"{prefix}misalignment_score"] = float(self.score)
            out[f"{prefix}failed"] = 1.0 if self.failed else 0.0
            out[f"{prefix}verdict"] = str(self.verdict)
        if self.score_interval is not None:
            out[f"{prefix}misalignment_score_low"], out[f"{prefix}misalignment_score_high"] = map(float, self.score_interval)
        for layer, drift in sorted(self.layer_drift.items()):
            out[f"{prefix}drift/layer_{layer}"] = float(drift)
        for concept, trend in sorted(self.concept_trends.items()):
            out[f"{prefix}concept/{concept}"] = float(trend)
        if self.score is not None:
            out[f"{prefix}top_risky_features"] = (
                ", ".join(f"{f.id} ({f.concept})" for f in self.top_features) if self.top_features else "none"
            )
        out[f"{prefix}check_seconds"] = float(self.seconds)
        return out


def result_of(report: AuditReport, step: int, seconds: float, top_k: int) -> MonitorResult:
    """The monitor's summary of one audit report."""
    from ..risk import concept_trends

    risk = report.risk
    trends: dict[str, float] = {}
    if risk is not None:
        for t in concept_trends(risk.concepts):
            trends[t.concept] = max(trends.get(t.concept, float("-inf")), t.shift)
    feats = [] if risk is None else [
        MonitoredFeature(f.layer, f.latent, f.concept, f.label, float(f.drift_ratio)) for f in risk.risky_features[:top_k]
    ]
    return MonitorResult(
        step=int(step),
        score=None if risk is None else float(risk.score),
        verdict=None if risk is None else risk.verdict,
        threshold=float(report.config.threshold),
        layer_drift={ld.layer: float(ld.drift) for ld in report.layers},
        top_features=feats,
        concept_trends=trends,
        seconds=float(seconds),
        score_interval=None if risk is None or risk.score_interval is None else (risk.score_interval[0], risk.score_interval[1]),
    )


def model_types(config: Any) -> set[str]:
    """The ``model_type`` of a transformers config and of its text config, if it has one (a
    multimodal base's text half, e.g. 'gemma3_text' of 'gemma3', may be what is fine-tuned)."""
    types: set[str] = set()
    for cfg in (config, getattr(config, "text_config", None)):
        kind = getattr(cfg, "model_type", None)
        if isinstance(kind, str) and kind:
            types.add(kind)
    return types


def check_model_type(model: nn.Module, base: ModelHandle) -> None:
    """Raise :class:`ModelLoadError`, naming both, when `model` (unwrapped from DDP; a PEFT
    wrapper is read through) is another architecture than `base`: a model of another family can
    share the base's layer count, width and vocabulary, and its drift would then read as a
    fine-tune's. Models without a transformers config are left to the shape check."""
    inner = unwrap_peft(model)
    ours, theirs = model_types(getattr(inner, "config", None)), model_types(base.config)
    if not ours or not theirs or ours & theirs:
        return
    classes = getattr(base.config, "architectures", None) or []
    base_desc = f"model type {' / '.join(sorted(theirs))!r}" + (f", {classes[0]}" if classes else "")
    raise ModelLoadError(
        f"The model being checked ({type(inner).__name__}, model type {' / '.join(sorted(ours))!r}) is not of the "
        f"architecture of the base model {base.name} ({base_desc}).",
        "Monitor a fine-tune of the base model the monitor was built with: build the monitor from the checkpoint "
        "you start fine-tuning from.",
    )


def unwrap_module(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel wrappers (PEFT wrappers are kept:
    they are the model being trained)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DataParallel, DistributedDataParallel)):
        model = model.module
    return model


class AlignmentMonitor:
    """Scores a model under training against its base, every time :meth:`check` is called.

    `base`: the checkpoint the fine-tune starts from (handle, path, hub id or alias); `sae`: SAEs
    for the audited layers (default: shipped, cached or trained ones, as for ``compare_models``);
    `probes`: probe sets (default: every built-in set). `threshold` overrides the config's
    misalignment threshold; `config` defaults to the audit defaults with a small probe budget
    (:func:`monitor_config`). The base pass runs now, once; the base weights are released
    afterwards unless they were already loaded. Load the base with the dtype you train in, or the
    dtype difference itself shows up as drift.
    """

    reference: BaseReference
    """The base model's half of the audit, measured once."""
    top_k: int
    """How many risky features a result lists."""
    history: list[MonitorResult]
    """Every check's result, in call order."""
    last_report: AuditReport | None
    """The full report of the latest check (only the latest is kept: a report holds every
    statistic and is large for wide SAEs)."""

    def __init__(
        self,
        base: ModelHandle | str,
        sae: SAESet | None = None,
        probes: Sequence[str] | None = None,
        *,
        threshold: float | None = None,
        config: AuditConfig | None = None,
        layers: Sequence[int] | None = None,
        top_k: int = 5,
    ) -> None:
        self.reference = prepare_reference(base, sae, probes, config=monitor_config(config, threshold), layers=layers)
        self.top_k = top_k
        self.history = []
        self.last_report = None

    def __repr__(self) -> str:
        return (
            f"AlignmentMonitor(base={self.base.name!r}, layers={self.reference.layers}, "
            f"threshold={self.threshold}, checks={len(self.history)})"
        )

    @property
    def base(self) -> ModelHandle:
        return self.reference.base

    @property
    def threshold(self) -> float:
        return float(self.reference.config.threshold)

    @property
    def config(self) -> AuditConfig:
        """The settings every check uses (layers resolved)."""
        return self.reference.config

    def check_architecture(self, model: nn.Module) -> None:
        """Raise :class:`~neuronlens.errors.ModelLoadError` when `model` cannot be compared with the
        base model: another model type, layer count or hidden size, or fewer token embeddings.
        Cheap (reads configs only), so a training loop can call it before its first step."""
        net = unwrap_module(model)
        check_model_type(net, self.base)
        self.reference.check_module(net)

    def check(self, model: nn.Module, step: int | None = None, *, identity: dict[str, Any] | None = None) -> MonitorResult:
        """Audit `model` (the full model or its PEFT wrapper, on any device) as it is now.

        The model is put in eval mode and read without gradients; every module's train/eval mode
        is restored afterwards exactly as it was. `step` labels the result (default: the number
        of checks so far); `identity` is what the report records about the model (default: an
        in-memory model). Raises :class:`~neuronlens.errors.ModelLoadError` when the model's
        architecture differs from the base model's (:meth:`check_architecture`)."""
        net = unwrap_module(model)
        step = len(self.history) if step is None else int(step)
        self.check_architecture(net)
        modes = [(m, m.training) for m in net.modules()]
        t = time.perf_counter()
        net.eval()
        try:
            report = self.reference.score(net, identity=identity, name=f"model under training (step {step})")
        finally:
            for m, mode in modes:
                m.training = mode
        result = result_of(report, step, time.perf_counter() - t, self.top_k)
        self.history.append(result)
        self.last_report = report
        return result
