"""Seconds per stage, as an immutable record each stage result carries."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class StageTimes:
    """(stage, seconds) pairs in the order the stages ran; the report's ``timings`` is their
    concatenation over the stage results (`validate_s`, `base_responses_s`, ... `total_s`)."""

    items: tuple[tuple[str, float], ...] = ()

    def plus(self, name: str, seconds: float) -> StageTimes:
        return StageTimes((*self.items, (name, float(seconds))))

    def since(self, name: str, start: float) -> StageTimes:
        """This record plus `name`, timed from `start` (a :func:`time.perf_counter` value) to now."""
        return self.plus(name, time.perf_counter() - start)

    def __add__(self, other: StageTimes) -> StageTimes:
        return StageTimes(self.items + other.items)

    def as_dict(self) -> dict[str, float]:
        return dict(self.items)


def now() -> float:
    return time.perf_counter()
