"""What the verdict needs to know about the audit besides its sums."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import AuditConfig


@dataclass(frozen=True)
class AuditFacts:
    """The audit's settings and identities, as the verdict's reasons and notes read them (the
    same fields as on an AuditReport, so a finished report serves as well)."""

    config: AuditConfig
    base: dict[str, Any]
    """The base model's identity (name, source, manifest_sha256, ...)."""
    saes: list[dict[str, Any]]
    """The audited layers' SAE identities (layer, sha256, ...)."""
    runtime: dict[str, str] = field(default_factory=dict)
    """dtype and device(s) the fine-tuned model was read in."""
    sae_warnings: list[str] = field(default_factory=list)
    """Why an SAE is too poor to trust (any warning makes a pass inconclusive)."""
