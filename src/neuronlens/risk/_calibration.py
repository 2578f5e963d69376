"""Was the threshold a verdict used calibrated for this audit?

The default threshold was chosen on model organisms of the embedded base model, audited with the
SAEs shipped for it at the default settings (docs/METHOD.md section 7). A misalignment score is a
concept-coordinate shift, so on another base model, other SAEs, other layers or settings that
change what is read (probe sets, prompts per set, response length, significance levels), the same
number means something else. The audit still gives its verdict, and says so beside it: an auditor
reading a certificate should not take an uncalibrated line for a calibrated one.
"""

from __future__ import annotations

import functools
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import AuditConfig
from ._types import threshold_percent

NOT_SCORE_SETTINGS: dict[str, str] = {
    "layers": "compared with the shipped SAEs' layers instead",
    "threshold": "the line itself, compared apart",
    "token_budget": "batching only (float rounding)",
    "top_k_saved": "what the report keeps, not what is scored",
    "labels": "names features, does not score them",
    "max_sae_fvu": "decides inconclusive, not the score",
    "min_prompts_for_pass": "decides inconclusive, not the score",
}
"""AuditConfig fields that do not change the misalignment score; every other field does, so a new
setting counts as score-shaping until it is listed here with its reason."""


def _shipped_root() -> Path:
    return Path(str(resources.files("neuronlens.saes").joinpath("shipped")))


@functools.cache
def calibrated_saes(model_digest: str) -> dict[int, str] | None:
    """Layer → SAE digest of the SAEs shipped for the model with this digest (the ones the default
    threshold was calibrated with), or None when none are shipped for it."""
    from ..saes._formats import load_saelens

    folder = _shipped_root() / model_digest[:16]
    if not folder.is_dir():
        return None
    found = {int(p.name.removeprefix("layer_")): p for p in folder.glob("layer_*") if p.is_dir()}
    return {layer: load_saelens(found[layer]).digest for layer in sorted(found)}


def calibration_notes(report: Any) -> list[str]:
    """One note naming how this audit differs from the one the default threshold was calibrated
    on, or none when it does not (the embedded model, its shipped SAEs, default settings)."""
    cfg: dict[str, Any] = report.config
    shipped = calibrated_saes(str(report.base.get("manifest_sha256", "")))
    differs: list[str] = []
    if shipped is None:
        differs.append(f"base model {report.base.get('name', '?')} (no organisms of it were audited)")
    else:
        used = {int(s["layer"]): s.get("sha256") for s in report.saes}
        if set(used) != set(shipped):
            differs.append(f"layers {sorted(used)} (calibrated at {sorted(shipped)})")
        elif any(used[layer] != shipped[layer] for layer in used):
            changed = [layer for layer in sorted(used) if used[layer] != shipped[layer]]
            differs.append(f"other SAEs than the shipped ones at layer(s) {', '.join(map(str, changed))}")
    defaults = AuditConfig()
    for f in fields(AuditConfig):
        if f.name in NOT_SCORE_SETTINGS:
            continue
        default = getattr(defaults, f.name)
        value = cfg.get(f.name, default)
        if value != default and not (isinstance(default, list) and list(value or []) == default):
            differs.append(f"{f.name}={value!r} (calibrated at {default!r})")
    threshold = float(cfg.get("threshold", defaults.threshold))
    if threshold != defaults.threshold:
        differs.append(f"threshold {threshold_percent(threshold)}")
    if not differs:
        return []
    return [
        f"Uncalibrated threshold: the default threshold ({threshold_percent(defaults.threshold)}) was calibrated on model "
        f"organisms of the embedded model audited with its shipped SAEs at default settings (docs/METHOD.md section 7), and "
        f"this audit differs: {'; '.join(differs)}. Check the verdict against organisms of this model "
        f"(`neuronlens organisms build --base`, then benchmarks/detection.py --base) before using it as a gate."
    ]
