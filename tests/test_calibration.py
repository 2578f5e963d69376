"""The calibration note: an audit of the embedded model with its shipped SAEs at default settings
gets none; every way an audit can leave what the default threshold was calibrated on is named."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import pytest

from neuronlens.config import AuditConfig
from neuronlens.risk._calibration import NOT_SCORE_SETTINGS, _shipped_root, calibrated_saes, calibration_notes
from neuronlens.saes._formats import load_saelens


def _embedded_digest() -> str:
    (folder,) = [p for p in _shipped_root().iterdir() if p.is_dir()]
    return load_saelens(next(folder.glob("layer_*"))).info.model_digest


def _report(**config):
    digest = _embedded_digest()
    saes = [{"layer": layer, "sha256": d} for layer, d in calibrated_saes(digest).items()]
    return SimpleNamespace(
        base={"name": "smollm2-135m-instruct", "manifest_sha256": digest}, saes=saes, config=AuditConfig(**config)
    )


def test_the_calibrated_audit_gets_no_note():
    assert calibrated_saes(_embedded_digest()) and set(calibrated_saes(_embedded_digest())) == {9, 15, 21}
    assert calibration_notes(_report()) == []
    assert calibration_notes(_report(token_budget=512, top_k_saved=5, labels=["x.csv"])) == []  # do not change the score


def test_another_base_model_is_named_with_the_commands_that_check_it():
    rep = _report()
    rep.base = {"name": "llama", "source": "/models/my-llama", "manifest_sha256": "f" * 64}
    (note,) = calibration_notes(rep)
    assert note.startswith("Uncalibrated threshold") and "embedded model (smollm2-135m-instruct)" in note
    assert "base model /models/my-llama" in note
    assert "`neuronlens organisms build --base /models/my-llama`" in note and "`python benchmarks/detection.py --like report.json`" in note
    rep.base = {"name": "x"}  # a report without a model digest is not "calibrated at no layers"
    (note,) = calibration_notes(rep)
    assert "base model x" in note and "calibrated at []" not in note


def test_other_saes_layers_settings_and_threshold_are_each_named():
    rep = _report(max_prompts_per_set=None, threshold=0.1, probes=["finance", "my_set.jsonl"])
    next(s for s in rep.saes if s["layer"] == 15)["sha256"] = "0" * 64
    rep.saes = [s for s in rep.saes if s["layer"] != 21]
    (note,) = calibration_notes(rep)
    assert "layers [9, 15] (calibrated at [9, 15, 21])" in note and "other SAEs than the shipped ones at layer(s) 15" in note
    assert "max_prompts_per_set=all (calibrated at 24)" in note and "threshold 10%" in note
    assert "probe sets: adds my_set.jsonl; drops coding, customer_support, emergent_misalignment, general, legal, medical" in note
    assert "organisms build" not in note and "--like report.json" in note  # the embedded model's organisms exist already


def test_what_reads_the_same_is_not_a_difference():
    """Probe sets in another order, and every built-in concept named, score the same."""
    from neuronlens.config import DEFAULT_PROBES
    from neuronlens.risk import builtin_concept_names

    assert calibration_notes(_report(probes=list(reversed(DEFAULT_PROBES)), concepts=builtin_concept_names())) == []
    (note,) = calibration_notes(_report(concepts=["fraud_scam"]))
    assert "concepts fraud_scam (calibrated: all built-in ones)" in note


@pytest.mark.parametrize("name", sorted(NOT_SCORE_SETTINGS))
def test_settings_listed_as_not_scoring_are_real_fields(name):
    assert name in {f.name for f in fields(AuditConfig)}


def test_weights_read_in_another_dtype_are_a_difference_the_device_is_not():
    rep = _report()
    rep.runtime = {"dtype": "float32", "device": "cuda:0"}
    assert calibration_notes(rep) == []
    rep.runtime = {"dtype": "bfloat16", "device": "cpu"}
    assert "weights in bfloat16 (calibrated in float32)" in calibration_notes(rep)[0]
