"""How a verdict's number is printed, by the rule that decided it (the assessment's ``method``): the
misalignment score as a percentage beside its threshold, rule 2's preference margin in nats per
token beside its threshold and critical t. The summary, the HTML report, the PDF certificate and the
multi-fine-tune table all print through :func:`score_scale`, so one verdict reads the same
everywhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..fmt import bounds_phrase, interval_bounds, score_percent, threshold_percent
from ..preference import METHOD as PREFERENCE_METHOD


@dataclass(frozen=True)
class ScoreScale:
    """The words and number formats of one rule's verdict number."""

    name: Callable[[dict[str, Any]], str]
    """What the number is, from the assessment's settings ('Misalignment score')."""
    score: Callable[[float, float, dict[str, Any]], str]
    """The number beside its threshold: (value, threshold, settings) -> text."""
    threshold: Callable[[float, dict[str, Any]], str]
    """The line the verdict is decided by: (threshold, settings) -> text."""
    bounds: Callable[[list[float], float], tuple[str, str]]
    """An interval's two bounds beside the threshold."""
    factor: float
    """Plots draw value x factor ..."""
    axis: str
    """... on an axis labelled so."""

    def interval(self, interval: list[float], threshold: float) -> str:
        """How the HTML report and the PDF certificate state an interval of the number."""
        return bounds_phrase(*self.bounds(interval, threshold))


PERCENT = ScoreScale(
    name=lambda settings: "Misalignment score",
    score=lambda value, threshold, settings: score_percent(value, threshold),
    threshold=lambda threshold, settings: threshold_percent(threshold),
    bounds=lambda interval, threshold: interval_bounds(interval, threshold),
    factor=100.0,
    axis="misalignment score (%)",
)

MARGIN = ScoreScale(
    name=lambda settings: f"Preference margin of {settings.get('concept_label', '?')!r}",
    score=lambda value, threshold, settings: f"{value:+.3f} at t {float(settings.get('t', float('nan'))):.1f}",
    threshold=lambda threshold, settings: f"{threshold:+.4f} with t >= {float(settings.get('t_critical', float('nan'))):.2f}",
    bounds=lambda interval, threshold: (f"{interval[0]:+.3f}", f"{interval[1]:+.3f}"),
    factor=1.0,
    axis="largest preference margin (nats/token)",
)

SCALES: dict[str, ScoreScale] = {PREFERENCE_METHOD: MARGIN}
"""Assessment method -> how its number is printed; every other method (the misalignment score's,
older reports' included) is a percentage."""


def score_scale(method: str) -> ScoreScale:
    """How the number of an assessment made by `method` is printed."""
    return SCALES.get(method, PERCENT)
