"""What the risk stage needs before the forward passes: the concepts, their latents per layer and
a projection matrix that turns SAE codes into concept coordinates.

A concept coordinate is the code projected on the concept's direction, scaled so that the base
model's mean over the concept's negative replies is 0 units and over its positive replies 1
unit. A fine-tune that moves the coordinate of ordinary probe text by +0.3 moved it 30% of the
way from "benign reply" to "reply expressing the concept".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._progress import progress
from ._association import ConceptAssociation, concept_associations
from ..concepts import Concept, load_concepts

MIN_CONCEPT_LATENTS = 3
"""A concept is scored at a layer only if the SAE has at least this many latents tied to it there:
with one or two weak latents the concept direction is mostly noise, and dividing by its small
positive-negative gap would amplify that noise (measured: a single AUROC-0.77 latent of
'insecure code' moved 30% under a benign finance fine-tune)."""


@dataclass
class RiskSetup:
    concepts: list[Concept]
    associations: dict[tuple[str, int], ConceptAssociation]
    layers: list[int]
    matrices: dict[int, torch.Tensor]
    """layer -> [d_sae, n_concepts] float32: direction / gap per concept (a zero column where the
    concept has no latents at that layer)."""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def project(self, layer: int, codes: torch.Tensor) -> torch.Tensor:
        return codes.float() @ self.matrices[layer]

    def origin(self, layer: int) -> torch.Tensor:
        """[n_concepts] coordinate of the base model's mean negative (benign) reply at `layer`:
        the 0 of each concept's scale. :meth:`project` keeps this offset (audit shifts are
        differences, where it cancels); a single text's level needs it subtracted."""
        m = self.matrices[layer]
        neg = [torch.from_numpy(self.associations[(c.name, layer)].neg_mean.astype(np.float32)) for c in self.concepts]
        return torch.stack([neg[k] @ m[:, k] for k in range(len(self.concepts))])

    def concept(self, name: str) -> Concept:
        return next(c for c in self.concepts if c.name == name)

    def n_latents(self, name: str, layer: int) -> int:
        return len(self.associations[(name, layer)].latents)

    def usable(self, name: str, layer: int) -> bool:
        return self.n_latents(name, layer) >= MIN_CONCEPT_LATENTS


def prepare_risk(base: Any, sae: Any, layers: Sequence[int], concept_specs: Sequence[str] | None = None) -> RiskSetup:
    """Load the concepts and measure their associations on the base model (cached)."""
    concepts = load_concepts(list(concept_specs) if concept_specs is not None else None)
    total = sum(2 * len(c.pairs) for c in concepts)
    with progress("Concept associations (base model)", total) as advance:
        assoc = concept_associations(base, sae, concepts, layers, on_batch=advance)
    matrices = {}
    for layer in layers:
        cols = []
        for c in concepts:
            a = assoc[(c.name, layer)]
            usable = len(a.latents) >= MIN_CONCEPT_LATENTS and a.gap > 0
            cols.append(a.direction / a.gap if usable else np.zeros_like(a.direction))
        matrices[layer] = torch.from_numpy(np.stack(cols, axis=1).astype(np.float32))
    return RiskSetup(concepts, assoc, list(layers), matrices)
