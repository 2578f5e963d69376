"""Stage 4 of the audit: mergeable sums, the drift measures computed from them, and the
:class:`DriftView` that reads an audit's sums as per-latent tables (with the q-values over all
audited layers)."""

from ._drift import LatentDriftArrays, bh_qvalues, latent_drift, latent_means, residual_drift
from ._sums import AuditSums, LatentSums, ReconstructionSums, ResidualSums, per_prompt_means
from ._view import DriftView, LatentTable

__all__ = ["AuditSums", "DriftView", "LatentDriftArrays", "LatentSums", "LatentTable", "ReconstructionSums", "ResidualSums", "bh_qvalues", "per_prompt_means", "latent_drift", "latent_means", "residual_drift"]
