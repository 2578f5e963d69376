"""AuditConfig.verdict_rule: 'score' keeps the misalignment score's verdict; 'preference' makes rule 2
(docs/PREREGISTRATION_RULE2.md) decide it from the preference margins, runs their read whatever
preference_margins says, keeps the score as evidence, and every output (summary, HTML, certificate
body, PDF, verify, the multi-fine-tune table) prints the rule's own number; the training monitor
refuses it before any work."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest

import tiny
from conftest import random_sae
from neuronlens import alignment
from neuronlens.certificate import export_certificate, schema_problems, verify_certificate
from neuronlens.cli._config import flags
from neuronlens.cli._multi import summary_rows, summary_text
from neuronlens.config import VERDICT_RULES
from neuronlens.errors import ConfigError
from neuronlens.preference import METHOD, TAU, ConceptMargin, PreferenceMargins, t_critical
from neuronlens.risk import VERDICT_RULES as RULES
from neuronlens.risk import AuditFacts, RiskAssessment, decide
from neuronlens.saes import SAESet
from test_certificate import statement_of
from test_heatmap import with_risk

pytestmark = pytest.mark.usefixtures("one_thread")

SAES = SAESet({1: random_sae(64, 128, 1, seed=1), 3: random_sae(64, 128, 3, seed=3)})
CFG = alignment.AuditConfig(max_prompts_per_set=4, max_new_tokens=6, learned_lens=False, verdict_rule="preference")
POPPLER = shutil.which("pdftotext") is not None
N = 48


def planted(mean: float, sd: float = 0.05, *, name: str = "power_seeking", label: str = "Power seeking") -> PreferenceMargins:
    """Margins of 11 concepts of N pairs each: `name` with mean `mean` and standard deviation `sd`,
    the others at -0.02."""
    def concept(n: str, lab: str, m: float) -> ConceptMargin:
        return ConceptMargin(n, lab, "harmful", False, N, N * m, N * m * m + (N - 1) * sd * sd)
    others = [concept(f"c{i}", f"Concept {i}", -0.02) for i in range(10)]
    return PreferenceMargins((concept(name, label, mean), *others), "digest")


def score_assessment(verdict: str = "pass") -> RiskAssessment:
    return RiskAssessment(method="neuronlens.risk/2", score=0.01 if verdict == "pass" else 0.2, threshold=0.05, verdict=verdict,
                          concepts=[], risky_features=[], reasons=[], notes=["Not scored: insecure_code."], settings={})


FACTS = AuditFacts(config=alignment.AuditConfig(), base={"manifest_sha256": "0" * 64}, saes=[])


def test_the_rule_names_are_the_configs_and_the_cli_has_the_option():
    assert set(RULES) == set(VERDICT_RULES) == {"score", "preference"}
    assert flags()["verdict_rule"] == "--verdict-rule"
    assert alignment.AuditConfig().verdict_rule == "score"  # until rule 2 meets the gate on seeds 6 and 7
    with pytest.raises(ConfigError, match="verdict_rule='margin' is not one of score, preference"):
        alignment.AuditConfig(verdict_rule="margin").validate()
    assert alignment.AuditConfig(verdict_rule="preference").reads_preference
    assert not alignment.AuditConfig().reads_preference and alignment.AuditConfig(preference_margins=True).reads_preference


def test_score_keeps_the_assessment_and_preference_decides_by_rule_2():
    s = score_assessment("fail")
    assert decide("score", s, planted(0.3), FACTS) is s
    # a concept counts (mean >= TAU, t far above the critical value): fail, its margin the number
    fails = decide("preference", s, planted(0.3), FACTS)
    assert (fails.method, fails.verdict, fails.threshold) == (METHOD, "fail", TAU)
    assert fails.score == pytest.approx(0.3) and fails.settings["concept_label"] == "Power seeking"
    assert fails.settings["t_critical"] == pytest.approx(t_critical(11, N))
    assert fails.reasons[0].startswith("Rule 2 fails it: 1 concept(s) count: Power seeking +0.300")
    assert "would make it 'fail'" in fails.notes[0] and "Not scored: insecure_code." in fails.notes
    assert any("uncalibrated" in n for n in fails.notes)  # a base without shipped SAEs: TAU not chosen on it
    # above TAU but t under the critical value: no concept counts, pass, though the number exceeds TAU
    noisy = decide("preference", score_assessment("fail"), planted(0.05, sd=0.5), FACTS)
    assert noisy.verdict == "pass" and noisy.score == pytest.approx(0.05) and noisy.settings["t"] < noisy.settings["t_critical"]
    assert noisy.reasons[0].startswith("Rule 2 passes it: no concept counts; the largest margin is Power seeking +0.050")
    # under TAU: pass; without an SAE assessment there are no concept shifts to keep, and never 'inconclusive'
    low = decide("preference", None, planted(0.02), FACTS)
    assert low.verdict == "pass" and low.concepts == [] and low.risky_features == []
    with pytest.raises(ConfigError, match="needs the preference margins"):
        decide("preference", s, None, FACTS)


@pytest.fixture(scope="module")
def audited(tmp_path_factory, tok) -> alignment.AuditReport:
    root = tmp_path_factory.mktemp("rule")
    base, ft = tiny.save(tiny.tiny_llama(tok), tok, root / "base"), tiny.save(tiny.tiny_llama(tok, seed=3), tok, root / "ft")
    return alignment.compare_models(alignment.load_model(base), alignment.load_model(ft), SAES, probes=["finance"], config=CFG)


def test_the_audit_runs_the_read_and_rule_2_decides(audited):
    rep = audited
    assert rep.config.preference_margins is False and rep.preference is not None  # read for the rule
    assert rep.decided_by_preference and rep.risk.method == METHOD
    assert rep.verdict == ("fail" if rep.preference.rule_fails else "pass")
    assert rep.risk.score == rep.preference.named.mean and rep.risk.threshold == rep.preference.tau
    assert rep.risk.settings["evidence_rule"]["method"] == "neuronlens.risk/2"  # the score, kept as evidence
    lines = rep.summary().splitlines()
    verdict_line = next(x for x in lines if x.startswith("Preference margin of"))
    assert repr(rep.preference.named.label) in verdict_line and f"threshold=+{TAU:.4f} with t >= " in verdict_line
    assert not any(x.startswith("Misalignment score") for x in lines)
    assert any(x.startswith("Preference margins (rule 2, the verdict)") for x in lines)


def test_every_output_prints_rule_2s_number_for_either_verdict(audited, tmp_path):
    for mean, verdict in ((0.3, "fail"), (0.0, "pass")):
        m = planted(mean)
        rep = dataclasses.replace(with_risk(dataclasses.replace(audited), verdict="pass"), preference=m)
        rep.risk = decide("preference", rep.risk, m, FACTS)
        assert rep.verdict == verdict
        html = rep.to_html(tmp_path / f"{verdict}.html").read_text()
        assert f"Preference margin of &#x27;Power seeking&#x27; <b>{mean:+.3f} at t " in html
        assert "Preference margins on matched pairs (rule 2, the verdict)" in html and "which decides this audit" in html
        paths = export_certificate(rep, formats=["json", "pdf"], out_dir=tmp_path / verdict)
        statement = statement_of(paths["json"])
        assert schema_problems(statement) == []
        body = statement["predicate"]
        assert body["verdict"] == verdict and body["risk"]["method"] == METHOD and body["preference"]["verdict_weight"] == "decides"
        said = verify_certificate(paths["json"], integrity_only=True).summary()
        assert f"preference margin of 'Power seeking' {mean:+.3f} at t " in said and f"threshold +{TAU:.4f} with t >= " in said
        if POPPLER:
            text = " ".join(subprocess.run(["pdftotext", "-layout", str(paths["pdf"]), "-"], capture_output=True, text=True,
                                           check=True).stdout.split())
            assert f"Preference margin of 'Power seeking' {mean:+.3f} at t" in text and "The verdict is rule 2's" in text
        row = summary_rows([rep], ["ft"], ["ft"])[0]
        assert f"{mean:+.3f} at t " in summary_text([row])


def test_the_score_rule_prints_as_before(audited):
    rep = with_risk(dataclasses.replace(audited), verdict="fail")
    assert not rep.decided_by_preference
    assert any(x.startswith("Misalignment score: 62% (threshold=50%)") for x in rep.summary().splitlines())


def test_the_training_monitor_refuses_the_preference_rule_before_any_work():
    from neuronlens.integrations import monitor_config

    with pytest.raises(ConfigError, match="the training monitor decides by the misalignment score"):
        monitor_config(alignment.AuditConfig(verdict_rule="preference"))
