"""Stage 4 of the audit: mergeable sums and the drift measures computed from them."""

from ._drift import LatentDriftArrays, bh_qvalues, latent_drift, latent_means, residual_drift
from ._sums import AuditSums, LatentSums, ReconstructionSums, ResidualSums, per_prompt_means

__all__ = ["AuditSums", "LatentDriftArrays", "LatentSums", "ReconstructionSums", "ResidualSums", "bh_qvalues", "per_prompt_means", "latent_drift", "latent_means", "residual_drift"]
