"""Drift figures people can look at: the latent-by-probe-set heatmap and the layer-wise drift chart.

Both are drawn on a bare :class:`matplotlib.figure.Figure` (no pyplot, no GUI backend), so they
render the same way in a notebook, on a laptop and on a headless CI runner; the HTML report and
the PDF certificate embed the same drawings.

Colour rule of the heatmap: log2 of the drift ratio (fine-tuned / base mean activation) on a
diverging scale centred on 0 (= no change): red means the latent fires more after fine-tuning,
blue less. Rows are the most-drifted latents of one layer (risky ones always included and marked
in red); columns are the probe sets. A cell whose change is not significant (q >= fdr or effect
below min_effect) is drawn hatched and grey with its factor in grey italics, so a large factor of
a latent that barely fires (x108 from 0.0001 to 0.0108) does not read as the strongest effect;
the colour scale spans the significant cells only. A layer where nothing drifted (layer drift
under the no-drift floor, no significant latent, no risky feature) gets a sentence saying so
instead of a grid of x1 cells.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import fill, wrap
from typing import TYPE_CHECKING

import numpy as np

from .._io import write_with_atomic
from ..config import AuditConfig, check_layer, is_int
from ..errors import NeuronLensError
from ._figure_io import check_format, ensure_save_folder, figure_bytes, format_from_path, has_gui, in_notebook

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ._report import AuditReport, FeatureDrift

_LABELS_IN, _COLOURBAR_IN, _CELL_IN = 2.6, 1.1, 0.6
COMPACT_MAX_IN = 6.0
"""A heatmap up to this wide (inches; SVG at 96 px per inch) sits two to a row in the HTML report,
whose content is 1052 px wide (measured in Chromium: two cards of 518 px with a 16 px gap)."""
WIDE_IN = 10.8
"""Width of a heatmap with more probe sets: one to a row, filling those 1052 px (less the card's padding)."""
RISK_COLOUR = "#c0392b"
_MAX_LABEL = 36


@dataclass(frozen=True)
class HeatmapRow:
    """One latent of the heatmap."""

    latent: int
    label: str
    risky: bool

    @property
    def title(self) -> str:
        """The row label shown on the figure: ``#id label``."""
        text = f"#{self.latent} {self.label}".strip()
        return text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "\u2026"


@dataclass
class DriftHeatmap:
    """The most-drifted latents of one layer (rows) by probe set (columns), coloured by log2 drift
    ratio. ``.show()`` displays it (notebook, desktop, or a PNG file when headless);
    ``.save(path)`` writes PNG, SVG or PDF; the numbers are in ``rows``, ``columns``, ``log2_ratio``."""

    layer: int
    rows: list[HeatmapRow]
    columns: list[str]
    log2_ratio: np.ndarray
    """Shape (len(rows), len(columns)); NaN where a value is not available."""
    note: str | None = None
    """Said under the figure, e.g. why only the all-probe column is shown."""
    significant: np.ndarray | None = None
    """Shape of ``log2_ratio``; True where the cell's change is significant (q < fdr and
    |effect| >= min_effect, per probe set). None: not known, nothing is marked."""
    nothing_drifted: str | None = None
    """Set when nothing drifted at this layer: the sentence that says so (shown instead of a grid)."""
    _figure: Figure | None = field(default=None, repr=False)

    @property
    def figure(self) -> Figure:
        """The matplotlib Figure (built on first use)."""
        if self._figure is None:
            from matplotlib.figure import Figure

            self._figure = Figure(figsize=self.figsize, layout="constrained")
            self.draw(self._figure)
        return self._figure

    @property
    def figsize(self) -> tuple[float, float]:
        """Inches. Up to three probe sets the figure is compact (5.5 in: two sit side by side in the
        HTML report); with more it is as wide as the report's content (one per row), so that
        neither leaves half the page empty nor shrinks its text."""
        compact, height = self.compact_figsize
        return (compact if compact <= COMPACT_MAX_IN else max(WIDE_IN, compact), height)

    @property
    def compact_figsize(self) -> tuple[float, float]:
        """Inches: the narrowest size at which its text stays readable (the PDF, which shows one
        heatmap, draws it at this size)."""
        if self.nothing_drifted:
            return (6.0, 1.0)
        return (_LABELS_IN + _COLOURBAR_IN + _CELL_IN * len(self.columns), 1.9 + 0.26 * max(1, len(self.rows)))

    @property
    def wide(self) -> bool:
        """Whether the figure takes a whole row of the HTML report (more than three probe sets)."""
        return self.figsize[0] > COMPACT_MAX_IN

    def draw(self, fig: Figure) -> None:
        """Draw the heatmap onto `fig` (used for the stored figure and for a pyplot window)."""
        _draw_heatmap(fig, self)

    # -- output ------------------------------------------------------------------------------------
    def to_bytes(self, fmt: str = "png", *, dpi: int = 150) -> bytes:
        """The figure encoded as PNG, SVG or PDF bytes."""
        return figure_bytes(self.figure, check_format(fmt), dpi=dpi)

    def save(self, path: str | Path, *, dpi: int = 150) -> Path:
        """Write the figure atomically; the format (png, svg, pdf) comes from the file suffix."""
        path = Path(path)
        fmt = format_from_path(path)
        ensure_save_folder(path.parent)
        return write_with_atomic(path, lambda tmp: tmp.write_bytes(figure_bytes(self.figure, fmt, dpi=dpi)))

    def show(self) -> Path | None:
        """Display the heatmap: inline in a notebook, in a window on a desktop; headless (no display,
        or a non-GUI matplotlib backend) it is saved as a PNG in the temp folder, whose path is
        printed and returned."""
        if in_notebook():
            from IPython.display import display

            display(self)
            return None
        if has_gui():
            import matplotlib.pyplot as plt

            fig = plt.figure(figsize=self.figsize, layout="constrained")
            self.draw(fig)
            plt.show()
            plt.close(fig)
            return None
        path = Path(tempfile.gettempdir()) / f"neuronlens-heatmap-layer{self.layer}-{os.getpid()}.png"
        self.save(path)
        print(f"No display available: the heatmap was saved to {path}", file=sys.stderr)
        return path

    def _repr_png_(self) -> bytes:
        """Jupyter shows the object itself as a PNG."""
        return self.to_bytes("png", dpi=110)


# -- building the data ------------------------------------------------------------------------------
def drift_heatmap(report: AuditReport, *, layer: int, k: int = 20) -> DriftHeatmap:
    """The heatmap of the `k` most-drifted latents of `layer` (risky latents of that layer are
    always among the rows) across the report's probe sets."""
    layer = check_layer(layer)  # "9" is a wrong type, not an unaudited layer
    if not is_int(k) or k < 1:
        raise NeuronLensError(f"k must be at least 1 (got {k!r}).", "Pass k=20 or another positive integer.")
    top = report.top_features(layer, k=k)  # raises a clear error for an unaudited layer
    risky = _risky_labels(report, layer)
    rows_feats = _with_risky_rows(report, layer, top, risky, k)
    rows = [HeatmapRow(f.latent, risky.get(f.latent) or f.label or "", f.latent in risky) for f in rows_feats]
    quiet = nothing_drifted(report, layer)
    probe_names = [str(ps["name"]) for ps in report.probe_sets]
    if report.sums is not None and probe_names:
        tables = {name: report.drift_table(layer, probe_set=name) for name in probe_names}
        log2, significant = _cell_arrays([[tables[name][f.latent] for name in probe_names] for f in rows_feats])
        return DriftHeatmap(layer, rows, probe_names, log2, significant=significant, nothing_drifted=quiet)
    log2, significant = _cell_arrays([[f] for f in rows_feats])
    note = "Per-probe-set columns need the report's .stats.safetensors sidecar; showing all probe sets together."
    return DriftHeatmap(layer, rows, ["all probe sets"], log2, note=note, significant=significant, nothing_drifted=quiet)


def _cell_arrays(cells: list[list[FeatureDrift]]) -> tuple[np.ndarray, np.ndarray]:
    """(log2 drift ratio, significant) arrays of shape (rows, columns)."""
    shape = (len(cells), len(cells[0]) if cells else 0)
    log2 = np.array([[_log2(c.drift_ratio) for c in row] for row in cells], dtype=float).reshape(shape)
    significant = np.array([[bool(c.significant) for c in row] for row in cells], dtype=bool).reshape(shape)
    return log2, significant


def nothing_drifted(report: AuditReport, layer: int) -> str | None:
    """The sentence the report shows instead of a heatmap when nothing drifted at `layer`: its
    drift is under the no-drift floor, none of its latents changed significantly and it has no
    risky feature. None when something did (or the drift is not a number)."""
    from ._report import DRIFT_FLOOR

    ld = next((ld for ld in report.layers if ld.layer == layer), None)
    if ld is None or not ld.drift < DRIFT_FLOOR or ld.n_significant_latents or _risky_labels(report, layer):
        return None
    return (
        f"Layer {layer}: nothing drifted. The residual stream changed by {ld.drift:.4f} on average (under the no-drift "
        f"floor of {DRIFT_FLOOR}) and none of its {f'{ld.n_latents} ' if ld.n_latents else ''}latents changed "
        "significantly, so there is no heatmap."
    )


def _risky_labels(report: AuditReport, layer: int) -> dict[int, str]:
    if report.risk is None:
        return {}
    return {f.latent: f.label for f in report.risk.risky_features if f.layer == layer}


def _with_risky_rows(
    report: AuditReport, layer: int, top: list[FeatureDrift], risky: dict[int, str], k: int
) -> list[FeatureDrift]:
    """`top`, with any risky latent of the layer that is missing put in place of the least-drifted
    non-risky rows, so the risky ones are always visible."""
    have = {f.latent for f in top}
    merged = list(top) + _features_by_latent(report, layer, [lat for lat in risky if lat not in have])
    while len(merged) > k:
        spare = [i for i, f in enumerate(merged) if f.latent not in risky]
        if not spare:
            break
        del merged[spare[-1]]
    return merged


def _features_by_latent(report: AuditReport, layer: int, latents: list[int]) -> list[FeatureDrift]:
    if report.sums is not None:
        table = report.drift_table(layer)
        return [table[lat] for lat in latents if 0 <= lat < len(table)]
    saved = {f.latent: f for f in report.top.get(layer, [])}
    return [saved[lat] for lat in latents if lat in saved]


def _log2(ratio: float) -> float:
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return math.nan
    if ratio <= 0:
        return -math.inf
    return math.log2(ratio)


# -- drawing ------------------------------------------------------------------------------------------
def _draw_heatmap(fig: Figure, hm: DriftHeatmap) -> None:
    if hm.nothing_drifted:
        fig.text(0.5, 0.5, fill(hm.nothing_drifted, 90, break_on_hyphens=False), ha="center", va="center", fontsize=9, wrap=True)
        return
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FuncFormatter

    ax = fig.add_subplot()
    vals = np.asarray(hm.log2_ratio, dtype=float)
    sig = np.ones(vals.shape, dtype=bool) if hm.significant is None else np.asarray(hm.significant, dtype=bool)
    # the colour scale spans the significant cells: a noisy x108 must not wash the real changes out
    finite = np.abs(vals[np.isfinite(vals) & sig])
    vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    shown = np.ma.masked_where(~np.isfinite(vals) | ~sig, np.clip(vals, -vmax, vmax))
    cmap = colormaps["RdBu_r"].with_extremes(bad=_NS_FILL)
    image = ax.imshow(shown, cmap=cmap, norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax), aspect="auto")
    ax.set_xticks(range(len(hm.columns)), hm.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(hm.rows)), [r.title for r in hm.rows], fontsize=8)
    for tick, row in zip(ax.get_yticklabels(), hm.rows):
        if row.risky:
            tick.set_color(RISK_COLOUR)
            tick.set_fontweight("bold")
    for (i, j), ok in np.ndenumerate(sig):
        if not ok:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor=_NS_HATCH,
                                   linewidth=0, gid="not-significant"))
    for i, row in enumerate(hm.rows):
        if row.risky:
            ax.add_patch(Rectangle((-0.5, i - 0.5), len(hm.columns), 1, fill=False, edgecolor=RISK_COLOUR, linewidth=2,
                                   gid="risky"))
    if vals.size <= 400:
        for (i, j), v in np.ndenumerate(vals):
            if sig[i, j]:
                colour = "white" if math.isfinite(v) and abs(v) > 0.6 * vmax else "black"
                ax.text(j, i, _ratio_text(v), ha="center", va="center", fontsize=7, color=colour)
            else:
                ax.text(j, i, _ratio_text(v), ha="center", va="center", fontsize=7, color=_NS_TEXT, fontstyle="italic",
                        gid="not-significant")
    bar = fig.colorbar(image, ax=ax, shrink=0.8, format=FuncFormatter(lambda v, _pos: _ratio_text(v)))
    bar.set_label("drift ratio, fine-tuned / base (log scale)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(f"Layer {hm.layer}: most-drifted latents by probe set", fontsize=10)
    ax.set_xlabel(_legend(hm, bool((~sig).any())), fontsize=7, loc="left")


_NS_FILL, _NS_HATCH, _NS_TEXT = "#f2f2f2", "#c4c4c4", "#555555"
NOT_SIGNIFICANT_LEGEND = "Hatched grey cells, grey italic factors: not significant (the factor may be noise)."


def not_significant_note(hm: DriftHeatmap, config: AuditConfig) -> str | None:
    """The sentence a report prints under heatmaps with not-significant cells (None if it has none),
    with the audit's own thresholds."""
    if hm.nothing_drifted or hm.significant is None or hm.significant.all():
        return None
    return (
        "Hatched grey cells with grey italic factors are not significant for that probe set (Benjamini\u2013Hochberg "
        f"q \u2265 {config.fdr} or |effect size| < {config.min_effect}): the factor is shown but "
        "may be noise, typically a latent that barely fires in either model. Colours span the significant cells only."
    )


def _legend(hm: DriftHeatmap, any_not_significant: bool) -> str:
    """The key under the heatmap, in lines short enough for its narrowest width."""
    lines = ["Boxed rows, red labels: risky features.", "Colour: red = fires more after fine-tuning,",
             "blue = less, white = no change."]
    if any_not_significant:
        lines += wrap(NOT_SIGNIFICANT_LEGEND, 48, break_on_hyphens=False)
    if hm.note:
        lines += wrap(hm.note, 48, break_on_hyphens=False)
    return "\n".join(lines)


def _ratio_text(log2v: float) -> str:
    """A log2 ratio as a readable factor: x3.2, /45, x120."""
    if math.isnan(log2v):
        return "n/a"
    if math.isinf(log2v):
        return "inf" if log2v > 0 else "-inf"
    r = 2.0 ** abs(log2v)
    num = f"{r:.2g}" if r < 10 else f"{r:.0f}" if r < 1000 else f"{r:.1e}"
    return ("\u00d7" if log2v >= 0 else "\u00f7") + num


def layer_drift_figure(report: AuditReport, *, size: tuple[float, float] = (7.2, 3.0)) -> Figure:
    """Layer-wise drift: the mean relative residual change per audited layer, overall (bars) and
    per probe set (markers), with the no-drift floor."""
    from matplotlib.figure import Figure

    from ._report import DRIFT_FLOOR

    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    layers = [ld.layer for ld in report.layers]
    x = np.arange(len(layers))
    ax.bar(x, [ld.drift for ld in report.layers], color="#7f8c8d", label="all probe sets")
    probes = sorted({p for ld in report.layers for p in ld.by_probe})
    markers = "os^vD<>p*h"
    for n, probe in enumerate(probes):
        ys = [ld.by_probe.get(probe, math.nan) for ld in report.layers]
        ax.plot(x, ys, linestyle="none", marker=markers[n % len(markers)], label=probe)
    ax.axhline(DRIFT_FLOOR, color=RISK_COLOUR, linestyle="--", linewidth=1, label=f"no-drift floor ({DRIFT_FLOOR})")
    ax.set_xticks(x, [f"L{la}" for la in layers])
    ax.set_ylabel("mean relative change")
    ax.set_title("Layer-wise drift of the residual stream", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
