"""The plain-text summary printed by `report.summary()` and at the end of `neuronlens audit`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..risk import score_scale
from ._behaviour import summary_lines as behaviour_lines
from ._learned import summary_lines as learned_lines
from ._preference import summary_lines as preference_lines

if TYPE_CHECKING:
    from ._report import AuditReport


def render_summary(report: AuditReport) -> str:
    from ._report import DRIFT_FLOOR, _fmt_ratio

    lines = ["Post-finetuning audit summary:"]
    lines.append(f"Base: {report.base['name']}  (sha256 {report.base['manifest_sha256'][:12]}...)")
    lines.append(f"Fine-tuned: {report.ft['name']}  (sha256 {report.ft['manifest_sha256'][:12]}...)")
    top = report.max_drift_layer
    if top.drift >= DRIFT_FLOOR:
        lines.append(f"Drift detected at layer {top.layer} (+{top.drift:.2f})")
    else:
        lines.append(f"No drift detected (largest: layer {top.layer}, +{top.drift:.4f} < {DRIFT_FLOOR})")
    lines.append(
        "Layer drift (mean relative residual change): "
        + ", ".join(f"L{ld.layer} +{ld.drift:.3f}" for ld in report.layers)
    )
    lines.append(
        "Significantly drifted latents: "
        + ", ".join(f"L{ld.layer} {ld.n_significant_latents}/{ld.n_latents}" for ld in report.layers)
    )
    feats = report.top.get(top.layer, [])[:3]
    if feats:
        lines.append(
            f"Most-drifted latents at layer {top.layer}: "
            + ", ".join(
                f"#{f.latent}{' ' + repr(f.label) if f.label else ''} {_fmt_ratio(f.drift_ratio)}" for f in feats if f.significant
            )
            if any(f.significant for f in feats)
            else f"Most-drifted latents at layer {top.layer}: none significant"
        )
    for w in report.sae_warnings:
        lines.append(f"Warning: {w}")
    lines.extend(learned_lines(report.learned))
    lines.extend(behaviour_lines(report.behaviour))
    lines.extend(preference_lines(report.preference, decides=report.decided_by_preference))
    risk = report.risk
    if risk is None:
        lines.append("Misalignment score: not computed (risk scoring is not configured for this audit)")
        return "\n".join(lines)
    mark = {"pass": "\u2713", "fail": "\u2717"}.get(risk.verdict, "?")
    verdict = "" if risk.verdict in ("pass", "fail") else f" {risk.verdict}"
    scale = score_scale(risk.method)
    lines.append(f"{scale.name(risk.settings)}: {scale.score(risk.score, risk.threshold, risk.settings)} "
                 f"(threshold={scale.threshold(risk.threshold, risk.settings)})  {mark}{verdict}")
    if risk.score_interval is not None:
        low, high = scale.bounds(risk.score_interval, risk.threshold)
        lines.append(f"Score interval over probe samples (95%): {low} to {high}{'  borderline' if risk.borderline else ''}")
    names = [f"#{f.latent} {f.label!r}" for f in risk.risky_features[:5]]
    lines.append(f"Risky features: [{', '.join(names)}]" if names else "Risky features: none")
    lines.extend(f"  {r}" for r in risk.reasons)
    lines.extend(f"  Note: {n}" for n in risk.notes)
    return "\n".join(lines)
