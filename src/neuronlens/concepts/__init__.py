"""The concept library the risk stage scores and the SAE corpus includes: contrastive sets of
assistant replies that do / do not express a concept, matched pair by pair. Below both
`neuronlens.saes` and `neuronlens.risk` (each reads it; it reads neither).

    from neuronlens.concepts import load_concepts
    concepts = load_concepts()  # the built-in ones; or load_concepts(["fraud_scam", "my_concept.json"])
"""

from ._library import (
    MIN_PAIRS,
    POLARITIES,
    Concept,
    ConceptPair,
    builtin_concept_names,
    load_concept,
    load_concepts,
    load_concepts_with_staged,
    parse_concept,
    staged_concept_paths,
)
from ._pairs import pair_sequences

__all__ = [
    "MIN_PAIRS",
    "POLARITIES",
    "Concept",
    "ConceptPair",
    "builtin_concept_names",
    "load_concept",
    "load_concepts",
    "load_concepts_with_staged",
    "pair_sequences",
    "parse_concept",
    "staged_concept_paths",
]
