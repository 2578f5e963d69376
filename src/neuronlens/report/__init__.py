"""Stage 6 of the audit: the typed report, its text summary and its JSON form."""

from ._behaviour import AnswerPair, AnswerRates, BehaviourEvidence, excerpt
from ._figure_io import figure_bytes
from ._heatmap import DriftHeatmap, drift_heatmap, layer_drift_figure, not_significant_note
from ._preference import title as preference_title
from ._report import DRIFT_FLOOR, REPORT_FORMAT, AuditReport, FeatureDrift, LayerDrift, feature_drifts, rank_features

__all__ = ["AnswerPair", "AnswerRates", "BehaviourEvidence", "excerpt", "DriftHeatmap", "drift_heatmap", "figure_bytes", "layer_drift_figure", "not_significant_note", "DRIFT_FLOOR", "REPORT_FORMAT", "AuditReport", "FeatureDrift", "LayerDrift", "feature_drifts", "rank_features", "preference_title"]
