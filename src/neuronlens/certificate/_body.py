"""The certificate body (the in-toto predicate): what was audited, how, and what was found.

Determinism rule: the same report gives the same body, byte for byte in canonical JSON, except
``created_at`` (when the certificate was issued). That is why the body holds no other time (not
the audit's start, not timings) and no evidence contexts, and why keys are sorted on output.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from ._errors import CertificateError
from ._behaviour import behaviour_body
from ._learned import learned_body
from ._preference import preference_body
from ._schema import DIGEST_SCHEME, SCHEMA_VERSION

if TYPE_CHECKING:
    from ..report import AuditReport

_MODEL_KEYS = ("name", "source", "kind", "revision", "manifest_sha256")
_RISKY_KEYS = (
    "layer", "label", "label_source", "concept", "concept_label", "polarity", "direction",
    "drift_ratio", "effect_size", "q_value", "association", "contribution", "read",
)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8, no NaN: the bytes that are hashed and signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def require_certifiable(report: AuditReport) -> None:
    """Refuse, with what is missing, a report a certificate cannot honestly be made from."""
    if report.risk is None:
        raise CertificateError(
            "This report has no risk assessment, so a certificate would have no misalignment score, threshold, "
            "verdict or risky features.",
            "Re-run the audit with risk scoring (compare_models with metrics including 'misalignment_score', the default), "
            "then export the certificate from that report.",
        )
    for role, ident in (("base", report.base), ("fine-tuned", report.ft)):
        if not ident.get("files") or not ident.get("manifest_sha256"):
            raise CertificateError(
                f"This report does not record the {role} model's file digests, which a certificate must name.",
                "Re-run the audit with this NeuronLens version (reports record per-file sha256 digests).",
            )
    if not report.layers:
        raise CertificateError("This report has no layer drift results.", "Re-run the audit; it measures at least one layer.")


def build_body(report: AuditReport, *, created_at: str | None = None) -> dict[str, Any]:
    """The certificate body of `report` (call :func:`require_certifiable` first)."""
    from .._version import __version__
    from ..report import REPORT_FORMAT

    risk = report.risk
    assert risk is not None
    body = {
        "schema_version": SCHEMA_VERSION,
        "neuronlens_version": __version__,
        "created_at": created_at or utc_now(),
        "digest_scheme": DIGEST_SCHEME,
        "audit": {
            "neuronlens_version": report.neuronlens_version,
            "report_format": REPORT_FORMAT,
            "reads": list(report.reads),
            "runtime": dict(report.runtime),
            "sae_warnings": list(report.sae_warnings),
        },
        "models": {"base": _model(report.base), "fine_tuned": _model(report.ft)},
        "saes": [dict(s) for s in sorted(report.saes, key=lambda s: int(s["layer"]))],
        "probe_sets": [dict(p) for p in report.probe_sets],
        "config": report.config.to_dict(),
        "drift": {"layers": [_layer(ld) for ld in report.layers]},
        "risk": {
            "method": risk.method,
            "misalignment_score": float(risk.score),
            "threshold": float(risk.threshold),
            "score_interval": risk.score_interval,
            "verdict": risk.verdict,
            "reasons": list(risk.reasons),
            "notes": list(risk.notes),
            "concepts": [vars(c).copy() for c in risk.concepts],
            "settings": dict(risk.settings),
        },
        "risky_features": [{"id": int(f.latent), **{k: getattr(f, k) for k in _RISKY_KEYS}} for f in risk.risky_features],
        "verdict": risk.verdict,
        "passed": None if risk.verdict == "inconclusive" else risk.verdict == "pass",
        "learned": learned_body(report.learned),
        "preference": preference_body(report.preference, report.decided_by_preference),
        "behaviour": behaviour_body(report.behaviour),
    }
    return json_safe(body)


def _model(ident: dict[str, Any]) -> dict[str, Any]:
    out = {k: ident.get(k) for k in _MODEL_KEYS}
    out["name"] = str(out["name"])
    out["source"] = str(out["source"])
    out["kind"] = str(out["kind"])
    out["files"] = sorted(
        ({"path": str(f["path"]), "sha256": str(f["sha256"]), "size": int(f["size"])} for f in ident["files"]),
        key=lambda f: f["path"],
    )
    if isinstance(ident.get("base"), dict):
        out["base"] = _model(ident["base"])
    return out


def _layer(ld: Any) -> dict[str, Any]:
    return {
        "layer": int(ld.layer),
        "drift": ld.drift,
        "cosine": ld.cosine,
        "relative_rms": ld.relative_rms,
        "n_tokens": int(ld.n_tokens),
        "by_probe": dict(ld.by_probe),
        "n_significant_latents": int(ld.n_significant_latents),
        "n_latents": int(ld.n_latents),
    }


def json_safe(obj: Any) -> Any:
    """Plain JSON values only: non-finite floats become 'inf' / '-inf' / 'nan', tuples lists,
    paths strings, numpy scalars Python numbers."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf"))
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if hasattr(obj, "item"):  # numpy / torch scalar
        return json_safe(obj.item())
    raise CertificateError(f"Cannot put a {type(obj).__name__} into a certificate.", "Report this as a NeuronLens bug.")


def subjects(body: dict[str, Any]) -> list[dict[str, Any]]:
    """in-toto subjects: the fine-tuned model's files with their sha256, in path order."""
    return [{"name": f["path"], "digest": {"sha256": f["sha256"]}} for f in body["models"]["fine_tuned"]["files"]]


def body_without_time(body: dict[str, Any]) -> dict[str, Any]:
    """The body with ``created_at`` removed: equal for equal inputs."""
    return {k: v for k, v in body.items() if k != "created_at"}
