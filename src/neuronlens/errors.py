"""Errors NeuronLens raises for bad input: each names the problem and the fix.

The CLI maps every :class:`NeuronLensError` to exit code 2 (usage or input error), so a CI
gate can tell "the audit failed" (exit 1) from "the audit could not run" (exit 2).
"""

from __future__ import annotations

__all__ = ["NeuronLensError", "ModelLoadError", "SAEError", "ProbeError", "OutputError", "ConfigError", "DataError", "DistributedError", "NonFiniteError", "ReportError"]


class NeuronLensError(Exception):
    """An input or usage problem, raised before any long work starts where possible."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  How to fix: {fix}")


class ModelLoadError(NeuronLensError):
    """A model or adapter could not be resolved, validated or loaded."""


class SAEError(NeuronLensError):
    """An SAE could not be found, loaded, or does not fit the model."""


class ProbeError(NeuronLensError):
    """A probe set is missing, empty or malformed."""


class OutputError(NeuronLensError):
    """An output location cannot be written."""


class ConfigError(NeuronLensError):
    """A setting is out of range or inconsistent with the models."""


class DataError(NeuronLensError):
    """A fine-tuning data file is missing, unreadable or has malformed lines (named by number)."""


class DistributedError(NeuronLensError):
    """The ranks of a data-parallel audit could not start, or disagree on what they audit."""


class NonFiniteError(NeuronLensError):
    """A model or SAE produced NaN or infinite numbers (activations, codes or statistics): the
    audit cannot be trusted, so it stops instead of reporting them."""


class ReportError(NeuronLensError):
    """A saved report (its JSON or its statistics sidecar) cannot be read: missing, truncated or not NeuronLens's."""
