"""The preference stage: rule 2's margins (:mod:`neuronlens.preference`) of the audited pair, read on
the modules the audit already holds resident, as one more typed result (:class:`PreferenceStage`)
beside the lens, between :class:`~neuronlens.pipeline.FineTunedRun` and the report.

Residency as the lens's: a PEFT adapter injected into the base weights reads the pairs with the
adapter on and off on that one module; a fine-tune with weights of its own reads them while it is
resident, and the base side runs on the base model afterwards. The base model's read is cached by
its digest and the pairs read, so auditing several fine-tunes of one base reads it once (and a
full-weight fine-tune then needs no base model for this stage); the margins are cached by both
models' digests. Every rank of a data-parallel audit reads all pairs (528 replies, a few seconds
of a GPU) and takes rank 0's result, so all reports are the same. The training monitor
(:meth:`BaseReference.score`) runs no preference read, as it runs no lens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from .._cache import load_json_entry, store_json_entry
from .._progress import progress
from ..config import AuditConfig
from ..models import ModelHandle
from ..preference import METHOD, PairSet, PreferenceMargins, margins, reply_logprobs
from ._residency import adapter_off
from ._timing import StageTimes, now

if TYPE_CHECKING:
    from .._distributed import DataParallel

CACHE_KIND = "preference"
_CACHE_VERSION = 4
"""Bump when the stage computes something else from the same models and pairs (2: each prompt read
once per pair, equal to version 1 up to float rounding, so a base read cached by 1 is not mixed with
a fine-tune's read by 2; 3: the margins carry their evidence pairs; 4: the prefix every prompt
shares read once, equal to 3 up to float rounding)."""


@dataclass(frozen=True)
class PreferenceResult:
    """The stage's typed result: the margins (None when the settings turn the read off) and its seconds."""

    margins: PreferenceMargins | None
    times: StageTimes


class PreferenceStage:
    """The preference read of one audit, in the order the audit holds its models: :meth:`prepare`
    (pairs, caches), :meth:`read_ft` (the fine-tune resident), :meth:`finish` or
    :meth:`finish_adapter` (the base side), :meth:`result`. Every method is a no-op when the read
    is off or was cached."""

    def __init__(self, base: ModelHandle, ft: ModelHandle, pairs: PairSet | None, cached: PreferenceMargins | None,
                 parallel: DataParallel | None) -> None:
        self.base, self.ft, self.pairs, self.parallel = base, ft, pairs, parallel
        self._margins = cached
        self._base_lp: np.ndarray | None = None
        self._ft_lp: np.ndarray | None = None
        self._seconds = 0.0

    @classmethod
    def prepare(cls, base: ModelHandle, ft: ModelHandle, config: AuditConfig, parallel: DataParallel | None = None) -> PreferenceStage:
        """The stage for `config` (off unless ``config.reads_preference``): the cached margins of
        this pair, else the pairs to read."""
        if not config.reads_preference:
            return cls(base, ft, None, None, parallel)
        t = now()
        pairs = PairSet.build(base.tokenizer)
        stage = cls(base, ft, pairs, _load(_pair_key(base, ft, pairs)), parallel)
        stage._seconds += now() - t
        return stage

    @property
    def enabled(self) -> bool:
        return self.pairs is not None

    @property
    def pending(self) -> bool:
        """Whether a model still has to be read (on, and the margins were not cached)."""
        return self.enabled and self._margins is None

    def needs_base(self) -> bool:
        """Whether the base model still has to read the pairs: its read is neither held nor cached."""
        self._take_cached_base()
        return self.pending and self._base_lp is None

    def _take_cached_base(self) -> None:
        """The base model's read from the cache, looked up when needed rather than at :meth:`prepare`,
        so that compare_many's later fine-tunes find the read its first one stored."""
        if self.pending and self._base_lp is None and self.pairs is not None:
            self._base_lp = _load_lp(_base_key(self.base, self.pairs))

    def read_ft(self, ft_nn: nn.Module) -> None:
        """The fine-tuned side: the pairs read by `ft_nn` (resident)."""
        if self.pending and self._ft_lp is None:
            self._ft_lp = self._read(ft_nn, f"Preference margins: the fine-tuned model {self.ft.name} reads the matched pairs")
            self._take_cached_base()
            self._finish_if_ready()

    def finish_adapter(self, peft_nn: nn.Module) -> None:
        """The base side of a PEFT adapter injected into the base weights: the same module, adapter off."""
        if self.needs_base():
            with adapter_off(peft_nn):
                self._set_base(self._read(peft_nn, "Preference margins: the base model reads the matched pairs"))

    def finish(self, base_nn: nn.Module) -> None:
        """The base side on the base model `base_nn` (resident)."""
        if self.needs_base():
            self._set_base(self._read(base_nn, "Preference margins: the base model reads the matched pairs"))

    def result(self) -> PreferenceResult:
        """The margins (every rank takes rank 0's) and the stage's seconds (``preference_s``)."""
        if not self.enabled:
            return PreferenceResult(None, StageTimes())
        if self._margins is None:
            raise RuntimeError("The preference stage was not finished: read_ft and finish (or finish_adapter) must run first.")
        m = self._margins
        if self.parallel is not None:
            m = PreferenceMargins.from_dict(self.parallel.all_gather(m.to_dict())[0])
        return PreferenceResult(m, StageTimes().plus("preference_s", self._seconds))

    def _read(self, module: nn.Module, what: str) -> np.ndarray:
        assert self.pairs is not None
        t = now()
        pad = self.base.tokenizer.pad_token_id
        with progress(what, len(self.pairs.seqs)) as advance:
            lp = reply_logprobs(module, self.pairs.seqs, 0 if pad is None else pad, advance=advance)
        self._seconds += now() - t
        return lp

    def _set_base(self, lp: np.ndarray) -> None:
        assert self.pairs is not None
        self._base_lp = lp
        if self._is_main:
            _store_lp(_base_key(self.base, self.pairs), lp)
        self._finish_if_ready()

    def _finish_if_ready(self) -> None:
        if self._ft_lp is None or self._base_lp is None or self.pairs is None:
            return
        self._margins = margins(self.pairs, self._ft_lp, self._base_lp)
        key = _pair_key(self.base, self.ft, self.pairs)
        if key is not None and self._is_main:
            store_json_entry(CACHE_KIND, key, self._margins.to_dict())

    @property
    def _is_main(self) -> bool:
        return self.parallel is None or self.parallel.is_main


def _base_key(base: ModelHandle, pairs: PairSet) -> dict[str, Any] | None:
    if not base.cacheable:
        return None
    return {"method": METHOD, "version": _CACHE_VERSION, "side": "base", "base": base.digest, "dtype": base.dtype,
            "pairs": pairs.digest}


def _pair_key(base: ModelHandle, ft: ModelHandle, pairs: PairSet) -> dict[str, Any] | None:
    """What cached margins depend on: both models' files (an adapter's own base's too), the dtypes
    they were asked in, the pairs read and the stage's version."""
    if not (base.cacheable and ft.cacheable):
        return None
    return {"method": METHOD, "version": _CACHE_VERSION, "base": base.digest, "ft": ft.digest,
            "ft_base": None if ft.base is None else ft.base.digest, "dtype": [base.dtype, ft.dtype], "pairs": pairs.digest}


def _load(key: dict[str, Any] | None) -> PreferenceMargins | None:
    payload = load_json_entry(CACHE_KIND, key) if key is not None else None
    if payload is None:
        return None
    try:
        return PreferenceMargins.from_dict(payload)
    except (KeyError, TypeError, ValueError):  # written with other fields: read again
        return None


def _load_lp(key: dict[str, Any] | None) -> np.ndarray | None:
    payload = load_json_entry(CACHE_KIND, key) if key is not None else None
    return None if payload is None else np.asarray(payload, dtype=np.float64)


def _store_lp(key: dict[str, Any] | None, lp: np.ndarray) -> None:
    if key is not None:
        store_json_entry(CACHE_KIND, key, [float(x) for x in lp])
