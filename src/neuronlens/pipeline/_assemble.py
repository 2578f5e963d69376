"""The last stage: layer drift, most-drifted latents and risk computed from the finished sums,
then the :class:`AuditReport` built once from them."""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import NonFiniteError
from ..probes import ProbeSet
from ..report import AuditReport, FeatureDrift, LayerDrift, feature_drifts, rank_features
from ..risk import AuditFacts, RiskAssessment, assess, decide
from ..saes import SAESet, exceeds, quality_warning
from ..stats import AuditSums, DriftView, residual_drift
from ._behaviour import behaviour_evidence
from ._timing import StageTimes, now

if TYPE_CHECKING:
    from ._learned import LearnedStage
    from ._preference import PreferenceResult
    from ._plan import AuditPlan
    from ._reference import BaseReference, FineTunedRun


@dataclass(frozen=True)
class LayerResults:
    """Per audited layer: its residual drift and its most-drifted latents ('same' read, all probe sets)."""

    layers: tuple[LayerDrift, ...]
    top: dict[int, list[FeatureDrift]]


def assemble(ref: BaseReference, run: FineTunedRun, ft_identity: dict[str, Any], t_start: float,
             learned: LearnedStage | None = None, preference: PreferenceResult | None = None) -> AuditReport:
    """The report of `run` against `ref` (`t_start`: when the audit or check began), with what the
    fine-tune learned when the lens stage ran (`learned`) and the preference margins (`preference`)."""
    plan = ref.plan
    refuse_non_finite_sums(run.sums, str(ft_identity.get("name", "the fine-tuned model")))
    view = DriftView.of(run.sums, plan.reads, plan.config)
    results = layer_results(view, [ps.name for ps in plan.probe_sets], plan.config.top_k_saved)
    facts = AuditFacts(
        config=plan.config,
        base=ref.base.identity,
        saes=[s for s in plan.sae.identity() if s["layer"] in plan.layers],
        runtime=dict(run.runtime),
        sae_warnings=sae_warnings(plan, run.sums),
    )
    stages = (learned.times if learned else StageTimes()) + (preference.times if preference else StageTimes())
    risk, times = _risk(ref, view, run, facts, ref.times + run.times + stages)
    risk = decide(plan.config.verdict_rule, risk, preference.margins if preference else None, facts)
    report = AuditReport(
        base=facts.base,
        ft=ft_identity,
        saes=facts.saes,
        probe_sets=[probe_identity(ps, {"same": ref.same_responses, **run.responses}) for ps in plan.probe_sets],
        config=copy.deepcopy(plan.config),  # the report's own: a reference scores many models with one plan
        layers=list(results.layers),
        top=results.top,
        neuronlens_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sae_warnings=facts.sae_warnings,
        risk=risk,
        timings=times.since("total_s", t_start).as_dict(),
        sums=run.sums,
        reads=list(plan.reads),
        runtime=dict(run.runtime),
        behaviour=behaviour_evidence(ref, run, risk),
        learned=learned.lens if learned else None,
        preference=preference.margins if preference else None,
    )
    refuse_nan_results(report)
    return report


def _risk(ref: BaseReference, view: DriftView, run: FineTunedRun, facts: AuditFacts,
          times: StageTimes) -> tuple[RiskAssessment | None, StageTimes]:
    if ref.risk is None or run.evidence is None:
        return None, times
    t = now()
    risk = assess(view, ref.risk, run.evidence, ref.base.tokenizer, facts, dict(ref.plan.imported_labels))
    return risk, times.since("risk_s", t)


def layer_results(view: DriftView, probe_names: list[str], top_k: int) -> LayerResults:
    """Each audited layer's residual drift (overall and per probe set), its count of significant
    latents and its `top_k` most-drifted latents."""
    tables = view.tables("same")
    layers, top = [], {}
    for layer in view.layers:
        total = residual_drift(view.sums.resid_total(layer))
        table = feature_drifts(tables[layer])
        layers.append(LayerDrift(
            layer=layer, drift=total["drift"], cosine=total["cosine"], relative_rms=total["relative_rms"],
            n_tokens=total["n_tokens"],
            by_probe={p: residual_drift(view.sums.resid_total(layer, [p]))["drift"] for p in probe_names},
            n_significant_latents=sum(f.significant for f in table), n_latents=len(table),
        ))
        top[layer] = rank_features(table)[:top_k]
    return LayerResults(tuple(layers), top)


def sae_warnings(plan: AuditPlan, sums: AuditSums) -> list[str]:
    """Why an audited layer's SAE is too poor to trust: by the quality its files record, and by
    its reconstruction of this audit's base residuals."""
    max_fvu = plan.config.max_sae_fvu
    recorded = SAESet({la: plan.sae[la] for la in plan.layers}).quality_warnings(max_fvu)
    return recorded + probe_fvu_warnings(sums, plan.layers, max_fvu)


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


def probe_identity(ps: ProbeSet, digests: dict[str, dict[str, str]]) -> dict[str, Any]:
    """What the report records about a probe set: its identity and, per read, the sha256 of the
    responses that read used ('same': the base responses both models read; 'own': the fine-tuned
    model's own), so a report and its certificate say which text was read."""
    found = {read: d[ps.name] for read, d in digests.items() if ps.name in d}
    return {**ps.identity(), "responses_sha256": found} if found else ps.identity()


def in_memory_identity(name: str) -> dict[str, Any]:
    """What a report records about a model that exists only in memory (no files to digest)."""
    return {"name": name, "source": "in-memory", "kind": "in-memory", "revision": None, "manifest_sha256": "in-memory", "files": []}


def refuse_non_finite_sums(sums: AuditSums, ft_name: str) -> None:
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


def refuse_nan_results(report: AuditReport) -> None:
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
