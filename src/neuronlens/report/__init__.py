"""Stage 6 of the audit: the typed report, its text summary and its JSON form."""

from ._heatmap import DriftHeatmap, drift_heatmap
from ._report import DRIFT_FLOOR, REPORT_FORMAT, AuditReport, FeatureDrift, LayerDrift, rank_features

__all__ = ["DriftHeatmap", "drift_heatmap", "DRIFT_FLOOR", "REPORT_FORMAT", "AuditReport", "FeatureDrift", "LayerDrift", "rank_features"]
