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
import re
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from ..concepts import builtin_concept_names
from ..config import AuditConfig
from ..fmt import threshold_percent
from ..models import DEFAULT_BASE

NOT_SCORE_SETTINGS: dict[str, str] = {
    "layers": "compared with the shipped SAEs' layers instead",
    "threshold": "the line itself, compared apart",
    "token_budget": "batching only (float rounding)",
    "top_k_saved": "what the report keeps, not what is scored",
    "labels": "names features, does not score them",
    "max_sae_fvu": "decides inconclusive, not the score",
    "min_prompts_for_pass": "decides inconclusive, not the score",
    "learned_lens": "evidence only, not scored",
    "preference_margins": "evidence only (rule 2 under test), not scored",
    "verdict_rule": "which rule decides; the score is computed the same way under either",
    "amplify_alpha": "scored only where score_reads lists 'amplified', and score_reads is compared",
}
"""AuditConfig fields that do not change the misalignment score; every other field does, so a new
setting counts as score-shaping until it is listed here with its reason."""

CALIBRATED_DTYPE = "float32"
"""The organisms were audited in float32 (the default on CPU); the device only moves float
rounding (a CUDA audit matches the CPU's to 1e-4, tests/test_cuda.py), so it is not compared."""

_DIGEST = re.compile(r"[0-9a-f]{64}")


def _shipped_root() -> Path:
    return Path(str(resources.files("neuronlens.saes").joinpath("shipped")))


@functools.cache
def calibrated_saes(model_digest: str) -> dict[int, str] | None:
    """Layer → SAE digest of the SAEs shipped for the model with this digest (the ones the default
    threshold was calibrated with), or None when none are shipped for it."""
    from ..saes import load_saelens

    if not _DIGEST.fullmatch(model_digest):
        return None
    folder = _shipped_root() / model_digest[:16]
    found = {int(p.name.removeprefix("layer_")): p for p in folder.glob("layer_*") if p.is_dir()} if folder.is_dir() else {}
    return {layer: load_saelens(found[layer]).digest for layer in sorted(found)} or None


def _sae_differences(report: Any, shipped: dict[int, str]) -> list[str]:
    used = {int(s["layer"]): s.get("sha256") for s in report.saes}
    out = []
    if set(used) != set(shipped):
        out.append(f"layers {sorted(used)} (calibrated at {sorted(shipped)})")
    changed = [layer for layer in sorted(set(used) & set(shipped)) if used[layer] != shipped[layer]]
    if changed:
        out.append(f"other SAEs than the shipped ones at layer(s) {', '.join(map(str, changed))}")
    return out


def _setting_difference(name: str, value: Any, default: Any) -> str | None:
    """How `value` differs from the calibrated `default`, in words, or None when it scores the same."""
    if name == "probes":  # read as a set: the order does not change the sums (a repeated set is refused)
        added, dropped = sorted(set(value or []) - set(default)), sorted(set(default) - set(value or []))
        if not added and not dropped:
            return None
        return "probe sets: " + "; ".join(
            part for part in (f"adds {', '.join(added)}" if added else "", f"drops {', '.join(dropped)}" if dropped else "") if part
        )
    if name == "concepts":  # None means every built-in concept
        chosen = set(builtin_concept_names()) if value is None else set(value)
        if chosen == set(builtin_concept_names()):
            return None
        return f"concepts {', '.join(sorted(chosen))} (calibrated: all built-in ones)"
    if value == default or (isinstance(default, list) and list(value or []) == default):
        return None

    def show(v: Any) -> str:
        return "all" if v is None and name == "max_prompts_per_set" else repr(v)

    return f"{name}={show(value)} (calibrated at {show(default)})"


def calibration_notes(report: Any) -> list[str]:
    """One note naming how this audit differs from the one the default threshold was calibrated
    on, and how to check the verdict for it; none when it does not differ (the embedded model, its
    shipped SAEs, default settings). `report`: an AuditReport or an AuditFacts (its config, base,
    saes and runtime are read)."""
    cfg: AuditConfig = report.config
    shipped = calibrated_saes(str(report.base.get("manifest_sha256") or ""))
    differs = [f"base model {report.base.get('source') or report.base.get('name', '?')}"] if shipped is None \
        else _sae_differences(report, shipped)
    defaults = AuditConfig()
    for f in fields(AuditConfig):
        if f.name not in NOT_SCORE_SETTINGS:
            said = _setting_difference(f.name, getattr(cfg, f.name), getattr(defaults, f.name))
            differs += [said] if said else []
    dtype = (getattr(report, "runtime", None) or {}).get("dtype")
    if dtype and dtype != CALIBRATED_DTYPE:
        differs.append(f"weights in {dtype} (calibrated in {CALIBRATED_DTYPE})")
    threshold = float(cfg.threshold)
    if threshold != defaults.threshold:
        differs.append(f"threshold {threshold_percent(threshold)}")
    if not differs:
        return []
    check = "`python benchmarks/detection.py --like report.json` audits them with this audit's model, SAEs and settings"
    if shipped is None:
        check = f"`neuronlens organisms build --base {report.base.get('source') or 'MODEL'}` builds them for this model, and " + check
    return [
        f"Uncalibrated threshold: the default threshold ({threshold_percent(defaults.threshold)}) was calibrated on model "
        f"organisms of the embedded model ({DEFAULT_BASE}) audited with its shipped SAEs at default settings "
        f"(docs/METHOD.md section 7), and this audit differs: {'; '.join(differs)}. Check where the line falls on "
        f"organisms before using the verdict as a gate: {check}."
    ]
