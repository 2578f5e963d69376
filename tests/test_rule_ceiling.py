"""benchmarks/rule_ceiling.py: a rule chosen on some zoos and judged on the zoo left out (synthetic
zoos: a number that separates every zoo is chosen and meets the gate; one that separates only the
training zoos is found out on the left-out one)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import rule_ceiling  # noqa: E402

from neuronlens.errors import ConfigError  # noqa: E402


def _zoo(name: str, organisms: dict[str, tuple[bool, dict[str, float]]]) -> dict:
    return {"name": name, "files": [], "organisms": {n: {"misaligned": m, "features": f} for n, (m, f) in organisms.items()}}


def _organisms(good: bool, fluke: list[float]) -> dict[str, tuple[bool, dict[str, float]]]:
    """Three misaligned and three benign organisms: 'real' separates them where good, 'fluke' carries the given values."""
    out = {}
    for i, misaligned in enumerate([True, True, True, False, False, False]):
        real = (1.0 + i if misaligned else -1.0 - i) if good else float(i % 2)
        out[f"o{i}"] = (misaligned, {"real": real, "fluke": fluke[i]})
    return out


def test_a_number_that_separates_every_zoo_is_chosen_and_meets_the_gate():
    zoos = [_zoo(f"z{k}", _organisms(True, [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])) for k in range(3)]
    result = rule_ceiling.run(zoos)
    for z in result["zoos"]:
        one = z["families"]["one number"]
        assert one["rule"] == ["real"] and one["held_out"] == {"auroc": 1.0, "wrong": [], "met": True}
        assert z["ceiling"]["auroc"] == 1.0


def test_a_number_that_separates_only_the_training_zoos_fails_on_the_left_out_one():
    separating = [1.0, 2.0, 3.0, -1.0, -2.0, -3.0]
    inverted = [-1.0, -2.0, -3.0, 1.0, 2.0, 3.0]
    zoos = [_zoo("a", _organisms(False, separating)), _zoo("b", _organisms(False, separating)), _zoo("c", _organisms(False, inverted))]
    result = {z["zoo"]: z for z in rule_ceiling.run(zoos)["zoos"]}
    c = result["c"]["families"]["one number"]
    assert c["rule"] == ["fluke"] and c["train_auroc"] == 1.0
    assert c["held_out"]["auroc"] == 0.0 and len(c["held_out"]["wrong"]) == 6 and not c["held_out"]["met"]


def test_threshold_leaves_the_fewest_wrong_verdicts():
    assert rule_ceiling.threshold([0.1, 0.2, 0.5, 0.9], [False, False, True, True]) == pytest.approx(0.35)
    values, labels = [0.1, 0.6, 0.5, 0.9], [False, False, True, True]
    assert rule_ceiling._wrong(values, labels, rule_ceiling.threshold(values, labels)) == 1


def test_features_are_risk_signed_and_counting_needs_significance_and_specificity():
    row = {"harm_rate": 0.10, "caveat_rate": 0.20, "trends": {"A (own)": [0.3, 2, True], "B (own)": [0.3, 0, True],
                                                              "C (same)": [0.3, 1, False], "D (same)": [-0.2, 1, True]}}
    f = rule_ceiling.features(row, base_harm=0.05, base_caveat=0.30)
    assert f["behaviour: harm rise"] == pytest.approx(0.05) and f["behaviour: caveat fall"] == pytest.approx(0.10)
    assert [f[f"counting: {k}"] for k in ("A (own)", "B (own)", "C (same)", "D (same)")] == [0.3, 0.0, 0.0, 0.0]
    assert f["shift: D (same)"] == -0.2


def test_a_zoo_that_is_not_there_is_a_clear_error(tmp_path, capsys):
    assert rule_ceiling.main(["--zoo", "x=results/truth/seed0.json:nothing.json", "--zoo", "y=results/truth/seed0.json:nothing.json"]) == 2
    assert "nothing.json not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not NAME=TRUTH"):
        rule_ceiling.load_zoo("results/truth/seed0.json")


def test_the_committed_zoos_load_with_the_same_numbers():
    zoos = [rule_ceiling.load_zoo(s) for s in rule_ceiling.ZOOS if rule_ceiling.present(s)]
    assert len(zoos) >= 2
    for z in zoos:
        assert sum(o["misaligned"] for o in z["organisms"].values()) >= 5
        assert any(k.endswith("(amplified)") for o in z["organisms"].values() for k in o["features"])
    json.dumps(rule_ceiling.run(zoos))


def test_hypothesis_p_is_the_number_chosen_on_the_committed_zoos_and_judged_by_section_3(tmp_path):
    zoos = [s for s in rule_ceiling.ZOOS if rule_ceiling.present(s)]
    chosen = rule_ceiling.run([rule_ceiling.load_zoo(s) for s in zoos])["all_zoos"]
    if len(zoos) == 3:  # the three zoos it was frozen on (a later ZOOS may choose anew)
        assert {k: chosen[k] for k in ("rule", "threshold")} == rule_ceiling.HYPOTHESIS_P
    out = tmp_path / "p.json"
    assert rule_ceiling.main(["--frozen", "--json", str(out), *(a for s in zoos for a in ("--zoo", s))]) == 0
    judged = json.loads(out.read_text())["zoos"]
    wrong = 0
    for z in judged:
        gate = [r for r in z["rows"] if not r["sensitivity_curve"] and r["class"] in ("misaligned", "benign")]
        assert all(r["fails"] == (r["score"] > rule_ceiling.HYPOTHESIS_P["threshold"]) for r in z["rows"])
        assert z["targets"]["gate"]["organisms"] == len(gate) and "evidence" not in z["targets"]
        wrong += len(z["targets"]["gate"]["wrong"])
    if len(zoos) == 3:
        assert wrong == chosen["train_wrong"]  # the same verdicts as the choice counted, pooled
    assert rule_ceiling.main(["--frozen"]) == 2
    with pytest.raises(ConfigError, match="hold no 'nothing'"):
        rule_ceiling.judge_frozen(zoos[0], {"rule": ["nothing"], "threshold": 0.0})
