"""The audit report: typed results, a text summary, and JSON save/load.

The JSON file holds everything a person or a certificate needs (identities, settings, layer
drift, the most-drifted latents, risk results); the full per-latent sums go to a safetensors
sidecar (``<name>.stats.safetensors``) so that any view (another layer, another probe set) can
be recomputed later from the exact numbers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from .._io import ensure_writable_dir, os_reason, publish_dir, write_json_atomic, write_with_atomic
from ..config import AuditConfig, check_layer, check_positive_int
from ..errors import NeuronLensError, ReportError
from ..learned import LearnedLens
from ..preference import METHOD as PREFERENCE_METHOD
from ..preference import PreferenceMargins
from ..risk import AuditFacts, EvidenceStore, RiskAssessment, RiskSetup, assess
from ..stats import AuditSums, DriftView, LatentTable
from ._behaviour import BehaviourEvidence
from ._fields import config_of, numbers_of

REPORT_FORMAT = "neuronlens.report/1"
_FORMAT_STEM = REPORT_FORMAT.rsplit("/", 1)[0] + "/"
DRIFT_FLOOR = 0.005
"""Layer drift below this (0.5% mean relative change) is reported as no drift: float noise between
two loads of the same weights is orders of magnitude smaller, a LoRA fine-tune far larger."""


@dataclass
class FeatureDrift:
    """How one SAE latent moved between the base and the fine-tuned model."""

    layer: int
    latent: int
    base_mean: float
    ft_mean: float
    drift_ratio: float
    """(ft_mean + eps) / (base_mean + eps); > 1 the latent fires more after fine-tuning."""
    effect_size: float
    """(ft_mean - base_mean) / pooled token-level standard deviation."""
    t: float
    p_value: float
    q_value: float
    """Benjamini-Hochberg q over all latents of all audited layers."""
    base_fire_rate: float
    ft_fire_rate: float
    significant: bool
    """q < fdr and |effect_size| >= min_effect (AuditConfig)."""
    probe_set: str | None = None
    """None: all probe sets together."""
    read: str = "same"
    """'same': both models on identical text; 'own': each model on its own responses."""
    label: str | None = None
    label_source: str | None = None

    def __str__(self) -> str:
        name = f" {self.label!r}" if self.label else ""
        return (
            f"L{self.layer} #{self.latent}{name} drift={_fmt_ratio(self.drift_ratio)} "
            f"(base {self.base_mean:.3g} -> ft {self.ft_mean:.3g}, q={self.q_value:.2g})"
        )


@dataclass
class LayerDrift:
    layer: int
    drift: float
    """Mean over measured tokens of ||h_ft - h_base|| / ||h_base|| (identical text)."""
    cosine: float
    relative_rms: float
    n_tokens: int
    by_probe: dict[str, float] = field(default_factory=dict)
    n_significant_latents: int = 0
    n_latents: int = 0


def _fmt_ratio(r: float) -> str:
    if not math.isfinite(r):
        return "inf"
    return f"+{r:.2f}x" if r >= 1 else f"-{1 / max(r, 1e-12):.2f}x"


@dataclass
class AuditReport:
    """Result of :func:`neuronlens.alignment.compare_models`."""

    base: dict[str, Any]
    ft: dict[str, Any]
    saes: list[dict[str, Any]]
    probe_sets: list[dict[str, Any]]
    """Per probe set: name, source, n_prompts, sha256 of its prompts, and ``responses_sha256``:
    per read ('same': the base responses both models read; 'own': the fine-tuned model's own
    responses), the sha256 of the response token ids as read (:func:`neuronlens.probes.responses_sha256`;
    absent in reports written before it was recorded)."""
    config: AuditConfig
    """The settings the audit ran with (layers resolved)."""
    layers: list[LayerDrift]
    top: dict[int, list[FeatureDrift]]
    """Most-drifted latents per layer (identical-text read, all probe sets)."""
    neuronlens_version: str
    created_at: str
    sae_warnings: list[str] = field(default_factory=list)
    risk: RiskAssessment | None = None
    """Risk assessment (risky features, misalignment score, verdict); None if not computed."""
    timings: dict[str, float] = field(default_factory=dict)
    sums: AuditSums | None = field(default=None, repr=False)
    """Exact sufficient statistics (absent if the report was loaded without its sidecar)."""
    reads: list[str] = field(default_factory=lambda: ["same"])
    runtime: dict[str, str] = field(default_factory=dict)
    """dtype and device(s) the fine-tuned model was read in (empty in reports written before it was recorded)."""
    behaviour: BehaviourEvidence | None = None
    """What the fine-tune's answers say: the behavioural scorer's counts on the base, own and
    amplified answers, and the answers that moved most towards risky concepts beside the base
    model's (report/_behaviour.py); None in reports written before it was recorded."""
    learned: LearnedLens | None = None
    """What the fine-tune appears to have been trained on (Activation Difference Lens: promoted and
    suppressed tokens, steered samples); evidence only, no verdict weight. None when the audit ran
    without it (``learned_lens`` off, the training monitor, reports written before it existed)."""
    preference: PreferenceMargins | None = None
    """The preference margins on the concept library's matched pairs and what rule 2
    (docs/PREREGISTRATION_RULE2.md) says: evidence, or the verdict under ``verdict_rule='preference'``
    (:attr:`decided_by_preference`). None when the audit ran without it (neither asked for, the
    training monitor, older reports)."""

    # -- verdict ---------------------------------------------------------------------------------
    @property
    def verdict(self) -> str | None:
        """'pass', 'fail', 'inconclusive', or None when risk scoring was not run."""
        return None if self.risk is None else self.risk.verdict

    @property
    def decided_by_preference(self) -> bool:
        """Whether rule 2's preference margins decided the verdict (``verdict_rule='preference'``)."""
        return self.risk is not None and self.risk.method == PREFERENCE_METHOD

    @property
    def passed(self) -> bool | None:
        v = self.verdict
        return None if v is None or v == "inconclusive" else v == "pass"

    @property
    def max_drift_layer(self) -> LayerDrift:
        return max(self.layers, key=lambda ld: ld.drift)

    # -- features --------------------------------------------------------------------------------
    def _layer_list(self) -> list[int]:
        return [int(layer) for layer in self.config.layers or [ld.layer for ld in self.layers]]

    def drift_view(self) -> DriftView:
        """The report's sums read with its settings (needs the sums)."""
        if self.sums is None:
            raise NeuronLensError(
                "This report was loaded without its statistics sidecar, so per-latent tables cannot be recomputed.",
                "Keep the .stats.safetensors file next to the report JSON, or use report.top_features().",
            )
        return DriftView.of(self.sums, self.reads, self.config, self._layer_list())

    def drift_table(self, layer: int, *, read: str = "same", probe_set: str | None = None) -> list[FeatureDrift]:
        """Drift of every latent of `layer` (needs the sums). q-values are BH-adjusted over all
        latents of all audited layers for this read and probe selection."""
        view = self.drift_view()
        layer = check_layer(layer)
        if layer not in self._layer_list():
            raise NeuronLensError(f"Layer {layer} was not audited (audited: {self._layer_list()}).", "Pick an audited layer.")
        if read not in self.reads:
            raise NeuronLensError(f"This audit has no {read!r} read (it has {self.reads}).", "Use read='same'.")
        return feature_drifts(view.table(layer, read, probe_set))

    def rescore(self, setup: RiskSetup, evidence: EvidenceStore, tokenizer: Any,
                imported_labels: dict[tuple[int, int], tuple[str, str]] | None = None) -> RiskAssessment:
        """The risk assessment :func:`neuronlens.risk.assess` gives this report's sums and settings
        with the concept directions `setup` (a saved audit scored again with this version's rule;
        needs the sums)."""
        facts = AuditFacts(self.config, self.base, self.saes, self.runtime, self.sae_warnings)
        return assess(self.drift_view(), setup, evidence, tokenizer, facts, imported_labels)

    def top_features(
        self, layer: int, k: int = 10, *, probe_set: str | None = None, read: str = "same"
    ) -> list[FeatureDrift]:
        """The `k` most-drifted latents of `layer`: significant ones first, ranked by |log drift
        ratio| (ties by |t|). `k` must be a positive int (a slice bound of -1 would silently mean
        "all but the last"); `layer` an int (a "9" is a wrong type, not an unaudited layer)."""
        layer, k = check_layer(layer), check_positive_int(k, "k")
        if self.sums is None:
            if probe_set is not None or read != "same":
                self.drift_table(layer, read=read, probe_set=probe_set)  # raises the clear error
            if layer not in self.top:
                raise NeuronLensError(f"Layer {layer} was not audited (audited: {self._layer_list()}).", "Pick an audited layer.")
            return self.top[layer][:k]
        table = self.drift_table(layer, read=read, probe_set=probe_set)
        return rank_features(table)[:k]

    # -- text -----------------------------------------------------------------------------------
    def summary(self) -> str:
        from ._summary import render_summary

        return render_summary(self)

    def __str__(self) -> str:
        return self.summary()

    def to_html(self, path: str | Path) -> Path:
        """Write the self-contained HTML report (no network needed to view it)."""
        from ._html import write_html

        return write_html(self, path)

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "neuronlens_version": self.neuronlens_version,
            "created_at": self.created_at,
            "base": self.base,
            "ft": self.ft,
            "saes": self.saes,
            "probe_sets": self.probe_sets,
            "config": self.config.to_dict(),
            "reads": self.reads,
            "runtime": self.runtime,
            "layers": [asdict(ld) for ld in self.layers],
            "top_features": {str(la): [asdict(f) for f in fs] for la, fs in self.top.items()},
            "sae_warnings": self.sae_warnings,
            "risk": None if self.risk is None else self.risk.to_dict(),
            "timings": self.timings,
            "behaviour": None if self.behaviour is None else self.behaviour.to_dict(),
            "learned": None if self.learned is None else self.learned.to_dict(),
            "preference": None if self.preference is None else self.preference.to_dict(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the report JSON and the statistics sidecar (``<name>.stats.safetensors``) beside
        it, both or neither (staged, then renamed into place); returns the JSON path. A folder (an
        existing one, or a path ending in a slash) gets ``report.json`` inside it."""
        from safetensors.torch import save_file

        path = _report_path(path)
        ensure_writable_dir(path.parent, choose="pass a path in a folder you can write to")  # not a raw FileExistsError
        data = _json_safe(self.to_dict())
        with publish_dir(path.parent, merge=True) as staged:
            if self.sums is not None:
                sidecar = staged.path / path.with_suffix(".stats.safetensors").name
                write_with_atomic(sidecar, lambda tmp: save_file(self.sums.to_flat(), str(tmp), metadata={"format": REPORT_FORMAT}))
                data["stats_file"] = sidecar.name
            write_json_atomic(staged.path / path.name, data)
        return path

    @classmethod
    def load(cls, path: str | Path) -> AuditReport:
        """Read a report saved by :meth:`save` (a folder: its ``report.json``), with its
        statistics sidecar when that file is present. A file that is missing, truncated or not a
        NeuronLens report raises ReportError naming it."""
        path = _report_path(path)
        data = _read_report_json(path)
        sums = _read_sidecar(path, data)
        try:
            return cls._from_dict(data, sums)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReportError(f"Report {path} lacks or garbles a field ({type(exc).__name__}: {exc}).",
                              "Pass a report.json written by NeuronLens, unedited, or re-run the audit.") from exc

    @classmethod
    def _from_dict(cls, data: dict[str, Any], sums: AuditSums | None) -> AuditReport:
        return cls(
            base=data["base"],
            ft=data["ft"],
            saes=data["saes"],
            probe_sets=data["probe_sets"],
            config=config_of(data["config"]),
            layers=[LayerDrift(**numbers_of(LayerDrift, ld, f"layers[{i}]")) for i, ld in enumerate(data["layers"])],
            top={int(k): [FeatureDrift(**numbers_of(FeatureDrift, f, f"top_features.{k}[{i}]")) for i, f in enumerate(v)]
                 for k, v in data["top_features"].items()},
            neuronlens_version=data["neuronlens_version"],
            created_at=data["created_at"],
            sae_warnings=data.get("sae_warnings", []),
            risk=None if data.get("risk") is None else RiskAssessment.from_dict(data["risk"]),
            timings=data.get("timings", {}),
            sums=sums,
            reads=data.get("reads", ["same"]),
            runtime=data.get("runtime", {}),
            behaviour=None if data.get("behaviour") is None else BehaviourEvidence.from_dict(data["behaviour"]),
            learned=None if data.get("learned") is None else LearnedLens.from_dict(data["learned"]),
            preference=None if data.get("preference") is None else PreferenceMargins.from_dict(data["preference"]),
        )


def _report_path(path: str | Path) -> Path:
    """`path`, or ``report.json`` inside it when it names a folder."""
    p = Path(path)
    return p / "report.json" if p.is_dir() or str(path).endswith(("/", os.sep)) else p


_RECOPY = "Copy it again from the audit's output folder (an interrupted copy or a full disk cuts files short), or re-run the audit."


def _read_report_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"Cannot read report {path}: {os_reason(exc)}.",
                          "Pass the report.json that `neuronlens audit --out FOLDER` or report.save() wrote.") from exc
    except UnicodeDecodeError as exc:
        raise ReportError(f"Report {path} is not text (byte {exc.start} is not UTF-8).", "Pass a report.json written by NeuronLens.") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        ends_early = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        cut = "; the file ends early, as a truncated one does" if ends_early else ""
        raise ReportError(f"Report {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}{cut}).", _RECOPY) from exc
    found = data.get("format") if isinstance(data, dict) else None
    if isinstance(found, str) and found.startswith(_FORMAT_STEM) and found != REPORT_FORMAT:
        raise ReportError(f"Report {path} is of format {found}; this NeuronLens ({__version__}) reads {REPORT_FORMAT}.",
                          "Read it with the NeuronLens version that wrote it (its neuronlens_version field), or re-run the audit with this one.")
    if found != REPORT_FORMAT:
        raise ReportError(
            f"{path} is not a NeuronLens report of format {REPORT_FORMAT} (found {found!r}).",
            "Re-run the audit with this NeuronLens version.",
        )
    return data


def _read_sidecar(path: Path, data: dict[str, Any]) -> AuditSums | None:
    """The exact sums of the sidecar the report names; None when it names none or the file is absent."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    sidecar = path.parent / str(data.get("stats_file") or "")
    if not data.get("stats_file") or not sidecar.is_file():
        return None
    try:
        return AuditSums.from_flat(load_file(str(sidecar)))
    except (SafetensorError, OSError, ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise ReportError(
            f"The statistics sidecar {sidecar} of report {path} cannot be read ({exc}).",
            f"{_RECOPY} Without the sidecar (moved away), the report loads without its per-latent statistics.",
        ) from exc


def feature_drifts(table: LatentTable) -> list[FeatureDrift]:
    """`table` as one :class:`FeatureDrift` per latent."""
    a = table.drift
    return [
        FeatureDrift(
            layer=table.layer,
            latent=j,
            base_mean=float(a.base_mean[j]),
            ft_mean=float(a.ft_mean[j]),
            drift_ratio=float(a.drift_ratio[j]),
            effect_size=float(a.effect_size[j]),
            t=float(a.t[j]),
            p_value=float(a.p_value[j]),
            q_value=float(table.q_value[j]),
            base_fire_rate=float(a.base_fire_rate[j]),
            ft_fire_rate=float(a.ft_fire_rate[j]),
            significant=bool(table.significant[j]),
            probe_set=table.probe_set,
            read=table.read,
        )
        for j in range(len(table))
    ]


def rank_features(table: list[FeatureDrift]) -> list[FeatureDrift]:
    def key(f: FeatureDrift) -> tuple[bool, float, float]:
        lr = abs(math.log(f.drift_ratio)) if f.drift_ratio > 0 and math.isfinite(f.drift_ratio) else math.inf
        return (f.significant, lr, abs(f.t) if math.isfinite(f.t) else math.inf)

    return sorted(table, key=key, reverse=True)


def _json_safe(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings so the file stays standard JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
