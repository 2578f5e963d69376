"""How scores, thresholds and intervals are printed, the same in the summary, the HTML report, the
PDF certificate, `neuronlens verify` and the benchmarks' tables: a value is never printed so that it
reads as the threshold it differs from."""

from __future__ import annotations

__all__ = ["bounds_phrase", "interval_bounds", "interval_phrase", "percent_beside", "score_percent", "threshold_percent"]


def percent_beside(value: float, threshold: float, decimals: int = 1) -> str:
    """`value` as a percentage to `decimals` decimals, or to as many more (up to three) as it takes
    not to print a value that differs from the threshold as the threshold itself (4.98%, not 5.0%,
    beside a 5% threshold): a score or an interval bound is read against the threshold, and a
    passing 4.99% printed as "5%" beside "threshold=5%" reads as a contradiction."""
    for digits in range(decimals, 4):
        text = f"{value:.{digits}%}"
        if value == threshold or text != f"{threshold:.{digits}%}":
            break
    return text[1:] if text.startswith("-") and float(text[:-1]) == 0 else text  # "0.0%", not "-0.0%"


def threshold_percent(threshold: float) -> str:
    """The threshold as every report prints it: in whole percents when it is one (5%), otherwise
    to as many decimals (up to three) as it has (5.5%, 2.25%): a threshold of 0.055 printed as
    "6%" would misstate the rule the verdict was decided by."""
    for digits in range(4):
        text = f"{threshold:.{digits}%}"
        if abs(float(text[:-1]) / 100 - threshold) < 1e-12:
            break
    return text


def score_percent(score: float, threshold: float) -> str:
    """The misalignment score as the summary, the HTML report and the PDF certificate print it: in
    whole percents, with more digits only where whole percents would print the threshold."""
    return percent_beside(score, threshold, decimals=0)


def interval_bounds(interval: list[float] | tuple[float, float], threshold: float) -> tuple[str, str]:
    """A score interval's two bounds as printed beside `threshold` (`percent_beside`)."""
    return percent_beside(interval[0], threshold), percent_beside(interval[1], threshold)


def interval_phrase(interval: list[float] | tuple[float, float], threshold: float) -> str:
    """How the HTML report and the PDF certificate state a score interval."""
    return bounds_phrase(*interval_bounds(interval, threshold))


def bounds_phrase(low: str, high: str) -> str:
    """An interval's printed bounds as the HTML report and the PDF certificate state them."""
    return f"95% interval over probe samples {low} to {high}"
