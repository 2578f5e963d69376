"""NeuronLens inside fine-tuning: watch a model while it trains, screen its data before.

* :class:`AlignmentMonitor` - audit the model being trained from any loop (``monitor.check(model, step)``);
* :class:`AlignmentMonitorCallback` - the same as a Hugging Face / TRL ``TrainerCallback``: logs the
  misalignment score, layer drift and risky features every N steps, can stop training and
  certify the final model;
* :func:`screen_dataset` - rank fine-tuning examples by how strongly they express risk concepts
  on the base model (also ``neuronlens screen DATA.jsonl --base MODEL``).

See docs/MONITORING.md. The callback module imports ``transformers.TrainerCallback`` and loads
only when the callback is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._monitor import AlignmentMonitor, MonitoredFeature, MonitorResult, monitor_config
from ._screen import (
    MAX_TOKENS,
    ConceptHit,
    ScreenedExample,
    ScreenResult,
    SkippedLine,
    concept_coordinates,
    concept_sums,
    read_examples,
    screen_dataset,
)
from ._screen_turns import turn_sequences

if TYPE_CHECKING:
    from ._callback import AlignmentMonitorCallback

__all__ = [
    "MAX_TOKENS",
    "AlignmentMonitor",
    "AlignmentMonitorCallback",
    "ConceptHit",
    "MonitorResult",
    "MonitoredFeature",
    "ScreenResult",
    "ScreenedExample",
    "SkippedLine",
    "concept_coordinates",
    "concept_sums",
    "monitor_config",
    "read_examples",
    "screen_dataset",
    "turn_sequences",
]


def __getattr__(name: str) -> Any:
    if name == "AlignmentMonitorCallback":
        from ._callback import AlignmentMonitorCallback

        return AlignmentMonitorCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
