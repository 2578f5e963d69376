"""An audit's sums read as drift: the per-latent tables every result is built from.

A :class:`DriftView` holds the sums and the settings that turn them into numbers (the audited
layers, the reads, smoothing, the false-discovery rate and the minimum effect). Significance is
decided here, once: Benjamini-Hochberg q-values run over all latents of all audited layers for
one read and probe-set selection, so a latent's q depends on the whole audit, not on the layer
it is looked at from. The report, the risk stage and the heatmaps read their tables through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._drift import LatentDriftArrays, bh_qvalues, latent_drift
from ._sums import AuditSums

if TYPE_CHECKING:
    from ..config import AuditConfig


@dataclass(frozen=True)
class LatentTable:
    """Per-latent drift of one layer for one read and probe-set selection (arrays of length d_sae)."""

    layer: int
    read: str
    probe_set: str | None
    """None: all probe sets together."""
    drift: LatentDriftArrays
    q_value: np.ndarray
    """Benjamini-Hochberg q over all latents of all audited layers (this read and selection)."""
    significant: np.ndarray
    """q < fdr and |effect size| >= min_effect."""

    def __len__(self) -> int:
        return int(self.drift.p_value.size)


@dataclass(frozen=True)
class DriftView:
    """`sums` read with the audit's statistics settings (see the module docstring)."""

    sums: AuditSums
    layers: tuple[int, ...]
    reads: tuple[str, ...]
    smoothing: float
    fdr: float
    min_effect: float

    @classmethod
    def of(cls, sums: AuditSums, reads: list[str] | tuple[str, ...], config: AuditConfig,
           layers: list[int] | None = None) -> DriftView:
        """The view of `sums` with `config`'s settings; `layers` defaults to the config's."""
        chosen = config.layers if layers is None else layers
        return cls(sums, tuple(int(la) for la in chosen or []), tuple(reads), float(config.smoothing),
                   float(config.fdr), float(config.min_effect))

    def tables(self, read: str = "same", probe_set: str | None = None) -> dict[int, LatentTable]:
        """Every audited layer's table for `read` and `probe_set` (None: all probe sets)."""
        probes = None if probe_set is None else [probe_set]
        arrays = {la: latent_drift(self.sums.latent_total(read, la, probes), self.smoothing) for la in self.layers}
        all_q = bh_qvalues(np.concatenate([a.p_value for a in arrays.values()])) if arrays else np.array([])
        out, offset = {}, 0
        for la, a in arrays.items():
            q = all_q[offset : offset + a.p_value.size]
            significant = (q < self.fdr) & (np.abs(a.effect_size) >= self.min_effect)
            out[la] = LatentTable(la, read, probe_set, a, q, significant)
            offset += a.p_value.size
        return out

    def table(self, layer: int, read: str = "same", probe_set: str | None = None) -> LatentTable:
        """One audited layer's table (q-values still over all audited layers)."""
        return self.tables(read, probe_set)[layer]

    def prompts_read(self) -> int:
        """Probe prompts the audit read: the first audited layer's prompt count over all probe
        sets, on the 'same' read where there is one."""
        read = "same" if "same" in self.reads else self.reads[0]
        return int(self.sums.latent_total(read, self.layers[0]).p_base)
