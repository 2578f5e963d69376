"""Typed results of the risk stage (stored in the report and the certificate)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Evidence:
    """One probe context where a latent moved: the tokens and both models' activations."""

    probe_set: str
    prompt: str
    tokens: list[str]
    base_acts: list[float]
    ft_acts: list[float]
    read: str = "same"
    """'same': both models read the same text (base acts and ft acts align token by token);
    'own': the fine-tuned model's own response (base_acts are the base model reading it)."""

    @property
    def delta(self) -> float:
        return sum(self.ft_acts) / max(1, len(self.ft_acts)) - sum(self.base_acts) / max(1, len(self.base_acts))


@dataclass
class RiskyFeature:
    layer: int
    latent: int
    label: str
    label_source: str
    """Where the label came from: 'concept:<name> (AUROC ...)', 'auto:top-tokens', 'imported:<file>'."""
    concept: str
    concept_label: str
    polarity: str
    """'harmful' or 'protective' (the concept's polarity)."""
    direction: str
    """'rising' (a harmful concept's latent fires more) or 'suppressed' (a protective one fires less)."""
    drift_ratio: float
    effect_size: float
    q_value: float
    association: float
    """AUROC of the latent between the concept's positive and negative examples on the base model."""
    contribution: float
    """Share of its concept's shift this latent accounts for."""
    read: str = "same"
    top_tokens: list[str] = field(default_factory=list)
    """Tokens it fires on most in the audit's probe texts (the automatic label's basis)."""
    evidence: list[Evidence] = field(default_factory=list)

    def __str__(self) -> str:
        r = self.drift_ratio
        ratio = "inf" if not math.isfinite(r) else (f"+{r:.1f}x" if r >= 1 else f"-{1 / max(r, 1e-12):.1f}x")
        verb = " suppressed" if self.direction == "suppressed" else ""
        return f"#{self.latent} {self.label}{verb} drift={ratio} (layer {self.layer}, {self.concept_label})"


@dataclass
class ConceptScore:
    concept: str
    label: str
    polarity: str
    layer: int
    read: str
    shift: float
    """Signed shift of the concept's feature projection, as a fraction of the base model's
    positive-minus-negative gap (positive = towards risk: harmful up or protective down)."""
    t: float
    p_value: float
    q_value: float
    significant: bool
    n_latents: int
    """Latents associated with the concept at this layer."""
    competitive_p: float = 0.0
    """One-sided p-value of the risk shift among the risk shifts along random directions (the
    concept's weights on random latents of the layer): low = the concept moved more than the
    fine-tune moved features in general (0.0 in reports written before this test existed)."""
    specific: bool = True
    """competitive_p <= the audit's `specificity` level: the shift is the concept's own, not a
    share of a change that moved every direction."""
    se: float = math.nan
    """Standard error of the prompt-level mean difference the significance test is on: how much
    the shift would move with another sample of probe prompts (NaN in reports written before it
    was recorded)."""


@dataclass
class RiskAssessment:
    method: str
    score: float
    """Misalignment score in [0, 1]."""
    threshold: float
    verdict: str
    """'pass', 'fail' or 'inconclusive' (the SAEs or the concept associations are too weak to trust)."""
    concepts: list[ConceptScore]
    risky_features: list[RiskyFeature]
    reasons: list[str] = field(default_factory=list)
    """Why the verdict is what it is, in words."""
    notes: list[str] = field(default_factory=list)
    """Limits of this assessment that do not change the verdict (e.g. a concept the SAEs cannot see)."""
    settings: dict[str, Any] = field(default_factory=dict)
    score_interval: list[float] | None = None
    """[low, high]: how far the score could move with another sample of probe prompts (95%,
    docs/METHOD.md section 6); None in reports written before it was recorded."""

    @property
    def borderline(self) -> bool:
        """The threshold lies inside the score's interval: another sample of probe prompts could
        give the other verdict."""
        if self.score_interval is None or self.verdict not in ("pass", "fail"):
            return False
        low, high = self.score_interval
        return low < self.threshold <= high

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RiskAssessment:
        return cls(
            method=d["method"],
            score=float(d["score"]),
            threshold=float(d["threshold"]),
            verdict=d["verdict"],
            concepts=[ConceptScore(**c) for c in d.get("concepts", [])],
            risky_features=[
                RiskyFeature(**{**f, "evidence": [Evidence(**e) for e in f.get("evidence", [])]}) for f in d.get("risky_features", [])
            ],
            reasons=list(d.get("reasons", [])),
            notes=list(d.get("notes", [])),
            settings=dict(d.get("settings", {})),
            score_interval=None if d.get("score_interval") is None else [float(x) for x in d["score_interval"]],
        )
