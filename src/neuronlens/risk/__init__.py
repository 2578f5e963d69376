"""Stage 5 of the audit: which drifted features are risky, and the misalignment verdict."""

from ._evidence import EvidenceStore
from ._score import assess
from ._setup import RiskSetup, prepare_risk
from ._types import ConceptScore, Evidence, RiskAssessment, RiskyFeature
from ._concepts import MIN_PAIRS, Concept, ConceptPair, builtin_concept_names, load_concept, load_concepts

__all__ = ["EvidenceStore", "RiskSetup", "assess", "prepare_risk", "ConceptScore", "Evidence", "RiskAssessment", "RiskyFeature", "MIN_PAIRS", "Concept", "ConceptPair", "builtin_concept_names", "load_concept", "load_concepts"]
