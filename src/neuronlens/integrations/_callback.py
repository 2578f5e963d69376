"""The alignment monitor as a Hugging Face ``TrainerCallback`` (TRL's trainers use the same callbacks).

Every `every_n_steps` optimizer steps the model being trained is checked by an
:class:`AlignmentMonitor` and the result goes into the Trainer's logs under ``neuronlens/...``;
with `stop_on_fail` training stops once the misalignment score reaches the threshold; with
`certificate_dir` the final model is saved, audited and certified when training ends.

How the values reach the logs. Transformers runs the reporting callbacks (TensorBoard, W&B, ...)
before user callbacks, and a callback has no handle on the Trainer, so there are two routes:

* with ``trainer=`` (the pattern TRL's own callbacks use), the check's values are logged through
  ``trainer.log``: one extra ``state.log_history`` entry at that step, seen by every reporter;
* without it, the callback asks the Trainer to log at that step (``control.should_log``) and adds
  its values to that log entry in ``on_log``: they land in ``state.log_history`` and in the logs
  every later callback sees (progress bar, printer), but not in reporters registered before it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .._io import ensure_writable_dir, publish_dir
from ..config import AuditConfig
from ..errors import ConfigError
from ..models import ModelHandle
from ..saes import SAESet
from ._monitor import AlignmentMonitor, MonitorResult, unwrap_module

logger = logging.getLogger(__name__)


class AlignmentMonitorCallback(TrainerCallback):
    """Check the model every `every_n_steps` optimizer steps while a ``Trainer`` trains it (and its
    architecture against the base's when training begins).

    `base`, `sae`, `probes`, `threshold`, `config`: as for :class:`AlignmentMonitor` (built now;
    the base pass runs once, here). `stop_on_fail`: set ``control.should_training_stop`` when a
    check's score reaches the threshold. `certificate_dir`: at the end of training save the final
    model there (``model/``: full weights or the PEFT adapter, plus the tokenizer), audit it and
    write ``report.json`` and the certificate (`certificate_formats`, signed with `signing_key` if
    given). `trainer`: log through ``trainer.log`` so every reporting integration gets the values
    (module docstring); it is registered with that trainer if it is not yet.

    Results: ``callback.monitor.history`` (every check), ``callback.stopped_at`` (the step that
    stopped training, or None), ``callback.certificate`` ({format: path} once written).
    """

    def __init__(
        self,
        base: ModelHandle | str,
        sae: SAESet | None = None,
        probes: Sequence[str] | None = None,
        every_n_steps: int = 50,
        threshold: float | None = None,
        stop_on_fail: bool = False,
        config: AuditConfig | None = None,
        *,
        layers: Sequence[int] | None = None,
        certificate_dir: str | os.PathLike[str] | None = None,
        certificate_formats: Sequence[str] = ("json",),
        signing_key: str | os.PathLike[str] | None = None,
        trainer: Any = None,
    ) -> None:
        _check_every(every_n_steps)
        formats = _check_certificate(certificate_dir, certificate_formats, signing_key)
        monitor = AlignmentMonitor(base, sae, probes, threshold=threshold, config=config, layers=layers)
        self._setup(monitor, every_n_steps, stop_on_fail, certificate_dir, formats, signing_key, trainer)

    @classmethod
    def from_monitor(
        cls,
        monitor: AlignmentMonitor,
        every_n_steps: int = 50,
        stop_on_fail: bool = False,
        *,
        certificate_dir: str | os.PathLike[str] | None = None,
        certificate_formats: Sequence[str] = ("json",),
        signing_key: str | os.PathLike[str] | None = None,
        trainer: Any = None,
    ) -> AlignmentMonitorCallback:
        """A callback around an existing monitor (its base pass, settings and history)."""
        _check_every(every_n_steps)
        formats = _check_certificate(certificate_dir, certificate_formats, signing_key)
        self = cls.__new__(cls)
        self._setup(monitor, every_n_steps, stop_on_fail, certificate_dir, formats, signing_key, trainer)
        return self

    def _setup(
        self, monitor: AlignmentMonitor, every_n_steps: int, stop_on_fail: bool, certificate_dir: Any,
        formats: list[str], signing_key: Any, trainer: Any,
    ) -> None:
        self.monitor = monitor
        self.every_n_steps = int(every_n_steps)
        self.stop_on_fail = bool(stop_on_fail)
        self.certificate_dir = Path(certificate_dir) if certificate_dir is not None else None
        self.certificate_formats = formats
        self.signing_key = signing_key
        self.stopped_at: int | None = None
        self.certificate: dict[str, Path] | None = None
        self._pending: dict[str, float | str] | None = None
        self._trainer = trainer
        if trainer is not None and not any(cb is self for cb in trainer.callback_handler.callbacks):
            trainer.add_callback(self)

    # -- Trainer events ------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        """Refuse a model the base cannot be compared with now, before any training step is spent
        (the first check comes only after `every_n_steps` steps)."""
        if model is not None:
            self.monitor.check_architecture(model)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        if model is None or state.global_step % self.every_n_steps != 0:
            return control
        result = self.monitor.check(model, state.global_step)
        self._log(result, control)
        if self.stop_on_fail and result.failed:
            control.should_training_stop = True
            self.stopped_at = state.global_step
            logger.warning(
                "NeuronLens: misalignment score %.3f reached the threshold %.3f at step %d; stopping training.",
                result.score, result.threshold, state.global_step,
            )
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self._pending is None or logs is None:
            return
        logs.update(self._pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)
        self._pending = None

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.certificate_dir is None or model is None or not state.is_world_process_zero:
            return
        tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer") or self.monitor.base.tokenizer
        self.certificate = certify_final_model(
            self.monitor, model, tokenizer, self.certificate_dir, state.global_step,
            formats=self.certificate_formats, signing_key=self.signing_key,
        )

    # -- helpers ---------------------------------------------------------------------------------
    def _log(self, result: MonitorResult, control: Any) -> None:
        metrics = result.metrics()
        if self._trainer is not None:
            keep = control.should_log  # trainer.log resets it; the Trainer's own log at this step must survive
            self._trainer.log(dict(metrics))
            control.should_log = keep
        else:
            self._pending = metrics
            control.should_log = True


def certify_final_model(
    monitor: AlignmentMonitor, model: Any, tokenizer: Any, out_dir: Path, step: int,
    *, formats: Sequence[str] = ("json",), signing_key: Any = None,
) -> dict[str, Path]:
    """Save `model` into ``out_dir/model`` (replaced atomically), audit it against the monitor's
    reference with the saved files' digests as its identity, and write ``report.json`` and the
    certificate into `out_dir`. The audit reads the in-memory weights, which are the saved ones."""
    from .. import alignment
    from ..models import load_model

    net = unwrap_module(model)
    folder = _save_atomically(net, tokenizer, Path(out_dir), "model")
    handle = load_model(folder, base=monitor.base)  # digests the saved files; loads no weights
    monitor.check(net, step, identity=handle.identity)
    report = monitor.last_report
    assert report is not None
    written = {"report": report.save(Path(out_dir) / "report.json")}
    written.update(alignment.export_certificate(report, formats=formats, out_dir=out_dir, signing_key=signing_key))
    return written


def _save_atomically(net: Any, tokenizer: Any, parent: Path, name: str) -> Path:
    """``save_pretrained`` into a temporary folder, then moved into place in one rename."""
    target = ensure_writable_dir(parent) / name
    with publish_dir(target) as staged:
        net.save_pretrained(str(staged.path), safe_serialization=True)
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(staged.path))
    return target


def _check_every(every_n_steps: int) -> None:
    if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
        raise ConfigError(f"every_n_steps={every_n_steps!r} must be an integer >= 1.", "Pass e.g. every_n_steps=50.")


def _check_certificate(certificate_dir: Any, formats: Sequence[str], signing_key: Any) -> list[str]:
    """Refuse bad certificate options now, not after hours of training."""
    if certificate_dir is None:
        return []
    from ..certificate import check_certificate_options

    fmts = check_certificate_options(formats, signing_key)
    ensure_writable_dir(certificate_dir)
    return fmts
