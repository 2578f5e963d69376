"""The public face of NeuronLens: load two checkpoints, attach SAEs, compare, report.

    base = load_model("smollm2-135m-instruct")
    ft = load_model("./checkpoints/my-finetune")          # folder, .gguf, PEFT adapter, hub id
    sae = load_sae(base, layers=[9, 15, 21])               # shipped, cached, loaded or trained
    report = compare_models(base_model=base, ft_model=ft, sae=sae, probes=["finance", "legal"])
    print(report.summary())
    report.top_features(layer=15, k=10)
    reports = compare_many(base, ["./ckpts/checkpoint-100", "./ckpts/checkpoint-200"], sae=sae)  # one base pass
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .pipeline import METRICS, compare_many, compare_models
from .config import AuditConfig
from .models import ModelHandle, load_model
from .report import AuditReport, FeatureDrift, LayerDrift
from .saes import SAESet, SAETrainConfig, load_sae

if TYPE_CHECKING:
    from .risk import RiskyFeature

__all__ = [
    "METRICS",
    "AuditConfig",
    "AuditReport",
    "FeatureDrift",
    "LayerDrift",
    "ModelHandle",
    "SAESet",
    "SAETrainConfig",
    "compare_many",
    "compare_models",
    "drift_heatmap",
    "export_certificate",
    "risky_features",
    "verify_certificate",
    "load_model",
    "load_sae",
]


def _require_report(report: Any, what: str) -> None:
    """A clear error for a `report` that is not an :class:`AuditReport` (None from a failed step,
    a path), instead of an AttributeError from deep inside `what`."""
    from .errors import ConfigError

    if not isinstance(report, AuditReport):
        raise ConfigError(
            f"{what} needs an AuditReport, got {type(report).__name__}.",
            "Pass the report compare_models returned, or AuditReport.load('report.json').",
        )


def drift_heatmap(report: AuditReport, layer: int, *, k: int = 20) -> Any:
    """A heatmap of the `k` most-drifted latents of `layer` (rows, labelled ``#id label``) by
    probe set (columns), coloured by log drift ratio; has ``.show()`` and ``.save(path)``."""
    from .report import drift_heatmap as _heatmap

    _require_report(report, "drift_heatmap")
    return _heatmap(report, layer=layer, k=k)


def risky_features(report: AuditReport, topk: int | None = 5, *, echo: bool = True) -> list[RiskyFeature]:
    """The `topk` risky features of an audit (all of them for ``topk=None``; printed one per line
    unless ``echo=False``), each with its label, concept, drift and the probe contexts where it
    moved most. `topk` must be a positive int: a slice bound of -1 would mean "all but the last"."""
    from .config import check_positive_int
    from .errors import NeuronLensError

    _require_report(report, "risky_features")
    topk = check_positive_int(topk, "topk", allow_none=True)
    if report.risk is None:
        raise NeuronLensError(
            "This report has no risk assessment.",
            "Run compare_models with metrics including 'misalignment_score' (the default).",
        )
    feats = report.risk.risky_features[:topk]
    if echo:
        for f in feats:
            print(f)
        if not feats:
            print("No risky features.")
    return feats


def export_certificate(
    report: AuditReport,
    formats: Sequence[str] = ("pdf", "json"),
    out_dir: str | Path = ".",
    signing_key: str | Path | None = None,
) -> dict[str, Path]:
    """Write the alignment certificate (JSON: an in-toto statement in a DSSE envelope, signed with
    Ed25519 when `signing_key` is given; PDF: the human-readable version). Returns {format: path}."""
    from .certificate import export_certificate as _export

    return _export(report, formats=formats, out_dir=out_dir, signing_key=signing_key)


def verify_certificate(
    certificate: str | Path,
    *,
    models: Sequence[str | Path] = (),
    public_key: str | Path | None = None,
    integrity_only: bool = False,
) -> Any:
    """Authenticate a certificate with the signer's `public_key`, check its schema and recompute
    the digests of the given model files; the result says what, if anything, changed. Without a
    key pass ``integrity_only=True`` (then ``ok`` means consistent, not authenticated)."""
    from .certificate import verify_certificate as _verify

    return _verify(certificate, models=models, public_key=public_key, integrity_only=integrity_only)
