"""Stage 5 of the audit: which drifted features are risky, and the misalignment verdict."""

from ._evidence import EvidenceStore
from ._facts import AuditFacts
from ._labels import check_label_files, merge_imported
from ._setup import MIN_CONCEPT_LATENTS, RiskSetup, prepare_risk
from ._types import ConceptScore, Evidence, RiskAssessment, RiskyFeature
from ..concepts import MIN_PAIRS, Concept, ConceptPair, builtin_concept_names, load_concept, load_concepts
from ._association import ConceptAssociation, reply_means, association_cache_path, associations_from_means, concept_associations
from ._calibration import calibrated_saes
from ._score import METHOD, ConceptTrend, assess, concept_trends, lower_median
from ._reads import answers_label, read_phrase
from ._rules import VERDICT_RULES, decide
from ._scales import ScoreScale, score_scale
from ._residual import (
    GENERAL, ConceptReads, DirectionSums, ResidualDirection, ResidualDirections, concept_reads, directions_from_reads,
    general_sums, library_digest, loco_name, mean_residuals, residual_directions,
)

__all__ = ["AuditFacts", "check_label_files", "merge_imported", "EvidenceStore", "MIN_CONCEPT_LATENTS", "RiskSetup", "assess", "prepare_risk", "ConceptScore", "Evidence", "RiskAssessment", "RiskyFeature", "MIN_PAIRS", "Concept", "ConceptPair", "builtin_concept_names", "load_concept", "load_concepts", "ConceptAssociation", "association_cache_path", "associations_from_means", "concept_associations", "reply_means", "calibrated_saes", "METHOD", "ConceptTrend", "concept_trends", "lower_median", "answers_label", "read_phrase", "VERDICT_RULES", "decide", "ScoreScale", "score_scale", "GENERAL", "ConceptReads", "DirectionSums", "ResidualDirection", "ResidualDirections", "concept_reads", "directions_from_reads", "general_sums", "library_digest", "loco_name", "mean_residuals", "residual_directions"]
