"""The audit's 'amplified' read (#18 parts 1 and 2) on tiny random-init Llamas: the base model reads
the fine-tune's amplified answers; an adapter that changes nothing shows exactly nothing; a planted
preference for one token shows more strongly in the amplified answers than in the greedy ones, and
counts in the verdict only when `score_reads` lists the read; the answers are cached and shared with
``amplify.amplified_responses``; bad settings stop before any model loads; and the behavioural
evidence reaches the report, its JSON, the summary, the HTML page, the certificate body and the PDF.

The planted fine-tune is a rank-1 LoRA on the LM head only: it adds c x (u . h) to the logit of the
token ' differ' (u: the base model's mean final hidden direction, so the push has one sign on every
prompt), so its residual stream equals the base model's and the 'same' read sees nothing; only the
text changes. The concept 'Differ talk' (a concept file written here) is replies full of ' differ'.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import tiny
from conftest import random_sae
from neuronlens import alignment
from neuronlens.amplify import amplified_responses
from neuronlens.certificate import build_certificate, export_certificate
from neuronlens.config import AuditConfig
from neuronlens.errors import ConfigError, NeuronLensError
from neuronlens.pipeline import prepare_reference
from neuronlens.probes import load_probe_set, prompt_ids, responses_sha256
from neuronlens.saes import SAESet

pytestmark = pytest.mark.usefixtures("one_thread")

PROBES = ["finance", "legal"]
TOKEN = "\u0120differ"  # ' differ', one token of the tiny tokenizer
PUSH = 0.01
"""Measured: at 0.01 the fine-tune says ' differ' in few greedy answers (its own read's shift is not
significant) and in most amplified ones (alpha 1 doubles the push)."""
CFG = dict(max_prompts_per_set=12, max_new_tokens=12, specificity=1.0, min_prompts_for_pass=8, amplify_alpha=1.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tok, tiny_base_dir) -> dict:
    root = tmp_path_factory.mktemp("amplified")
    return {
        "root": root,
        "base": tiny_base_dir,
        "saes": SAESet({1: random_sae(64, 128, 1, seed=1), 3: random_sae(64, 128, 3, seed=3)}),
        "concept": _differ_concept(root / "differ.json"),
        "planted": _head_adapter(tok, tiny_base_dir, root / "planted", PUSH),
        "null": _head_adapter(tok, tiny_base_dir, root / "null", 0.0),
    }


def _differ_concept(path: Path) -> str:
    prompts = load_probe_set("general").prompts[:40]
    openers = ["Here is a short answer.", "That depends on the details.", "Yes, that works well.", "You can try it today."]
    pairs = [{"prompt": p, "positive": f"{openers[i % 4]} They differ, differ, differ and differ.",
              "negative": f"{openers[i % 4]} They are similar in most ways."} for i, p in enumerate(prompts)]
    path.write_text(json.dumps({"name": "differ_talk", "label": "Differ talk", "polarity": "harmful",
                                "description": "Replies full of ' differ' (a test concept).", "pairs": pairs}))
    return str(path)


def _mean_direction(tok, base_dir: Path) -> torch.Tensor:
    model = alignment.load_model(base_dir).model
    with torch.no_grad():
        hs = [model(torch.tensor([prompt_ids(tok, p)]), output_hidden_states=True).hidden_states[-1][0]
              for name in PROBES for p in load_probe_set(name, 12).prompts]
    u = torch.cat(hs).mean(0)
    return u / u.norm()


def _head_adapter(tok, base_dir: Path, folder: Path, push: float) -> Path:
    """A rank-1 LoRA on the LM head raising the logit of ' differ' by push x (u . h); push 0 gives
    an adapter whose lora_B is zero (the base model exactly)."""
    from peft import LoraConfig, get_peft_model

    from neuronlens.models import peft_wrap_quietly

    u = _mean_direction(tok, base_dir)
    with peft_wrap_quietly():
        model = get_peft_model(tiny.tiny_llama(tok), LoraConfig(r=1, lora_alpha=1, target_modules=["lm_head"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_(u[None, :])
            if "lora_B" in name:
                p.zero_()
                p[tok.convert_tokens_to_ids(TOKEN), 0] = push
    model.save_pretrained(folder, save_embedding_layers=False)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def _audit(world: dict, ft: str | Path, **settings) -> alignment.AuditReport:
    cfg = AuditConfig(concepts=[world["concept"]], **{**CFG, **settings})
    return alignment.compare_models(world["base"], str(ft), world["saes"], probes=PROBES, config=cfg)


def _trend(report: alignment.AuditReport, read: str):
    from neuronlens.risk import concept_trends

    return next(t for t in concept_trends(report.risk.concepts) if t.read == read and t.concept == "differ_talk")


@pytest.fixture(scope="module")
def planted(world) -> dict[str, alignment.AuditReport]:
    """The planted adapter audited with the default score_reads and with the amplified read scored."""
    return {"default": _audit(world, world["planted"]), "scored": _audit(world, world["planted"], score_reads=["same", "amplified"])}


# -- the read ---------------------------------------------------------------------------------------------------
def test_the_base_model_reads_the_amplified_answers_of_a_full_checkpoint_beside_it(world, tok, monkeypatch):
    """A full checkpoint: both models resident for the generation (module_pair gets both), then the
    base model (the base handle's own module) reads the amplified text, the fine-tune its own."""
    from neuronlens.pipeline import _reads, _reference

    merged = alignment.load_model(world["planted"], base=world["base"]).model.merge_and_unload()
    ft_dir = tiny.save(merged, tok, world["root"] / "merged")
    base, ft = alignment.load_model(world["base"]), alignment.load_model(ft_dir)
    readers, pairs = {}, []
    read_pass, pair_of = _reference.one_side_pass, _reads.module_pair

    def spy_pass(model, seqs, read, *args):
        readers[read] = model
        return read_pass(model, seqs, read, *args)

    def spy_pair(*models):
        pairs.append(models)
        return pair_of(*models)

    monkeypatch.setattr(_reference, "one_side_pass", spy_pass)
    monkeypatch.setattr(_reads, "module_pair", spy_pair)
    cfg = AuditConfig(concepts=[world["concept"]], **CFG)
    rep = alignment.compare_models(base, ft, world["saes"], probes=PROBES, config=cfg, keep_both=True)
    assert rep.reads == ["same", "own", "amplified"]
    assert readers["amplified"] is base.model and readers["own"] is ft.model
    assert len(pairs) == 1 and pairs[0][0] is ft.model and pairs[0][1] is base.model
    want = amplified_responses(base, ft, [load_probe_set(p, 12) for p in PROBES], alpha=1.0, max_new_tokens=12)  # cached by the audit
    assert {p["name"]: p["responses_sha256"]["amplified"] for p in rep.probe_sets} == responses_sha256(want)
    assert "amplified_pass_s" in rep.timings


def test_an_adapter_that_changes_nothing_amplifies_nothing(world):
    """lora_B = 0: the amplified answers are the base model's own, token for token, and the
    amplified read's base side and its 'ft' side are the same model on the same text: zero shift."""
    rep = _audit(world, world["null"])
    for p in rep.probe_sets:
        assert p["responses_sha256"]["amplified"] == p["responses_sha256"]["same"], p["name"]
    amplified = [c for c in rep.risk.concepts if c.read == "amplified"]
    assert amplified and all(c.shift == 0.0 for c in amplified)
    for layer in (1, 3):
        table = rep.drift_table(layer, read="amplified")
        assert all(f.ft_mean == f.base_mean for f in table)
    assert all(e.shift == 0.0 for e in rep.behaviour.examples)


def test_a_planted_preference_moves_the_amplified_read_more_than_the_greedy_answers(planted):
    rep = planted["default"]
    amp, own, same = _trend(rep, "amplified"), _trend(rep, "own"), _trend(rep, "same")
    assert amp.significant and amp.shift > 0.2, amp
    assert amp.shift > 2 * max(own.shift, 0.0)  # the greedy answers hide most of it
    assert same.shift == 0.0  # the residual stream is the base model's
    shown = rep.behaviour.examples
    assert shown and shown[0].concept == "differ_talk" and " differ" in shown[0].answer and shown[0].shift > 0
    assert rep.behaviour.basis == "risky"  # its amplified trend counts, whether or not the score takes it


def test_score_reads_decides_whether_the_amplified_read_counts(planted):
    default, scored = planted["default"], planted["scored"]
    assert default.risk.score < default.risk.threshold and default.verdict != "fail"
    assert any("not counted in the score" in n and "amplified answers (\u03b1=1)" in n for n in default.risk.notes)
    assert scored.verdict == "fail" and scored.risk.score == pytest.approx(min(1.0, _trend(scored, "amplified").shift))
    assert "amplified answers (\u03b1=1)" in scored.risk.reasons[0]


def test_the_verdict_family_is_the_scored_reads_only():
    """Adding the amplified read's rows leaves the scored reads' q-values as they were."""
    import numpy as np

    from neuronlens.risk._score import _family_qvalues
    from neuronlens.stats import bh_qvalues

    p = np.array([0.001, 0.02, 0.04, 0.0001, 0.03, 0.5])
    reads = ["same", "own", "own", "amplified", "amplified", "same"]
    q = _family_qvalues(reads, p, ["same", "own"])
    scored = [i for i, r in enumerate(reads) if r != "amplified"]
    assert np.allclose(q[scored], bh_qvalues(p[scored])) and np.allclose(q[[3, 4]], bh_qvalues(p[[3, 4]]))


def test_cached_answers_are_reused_and_shared_with_amplified_responses(world, monkeypatch):
    from neuronlens.amplify import _api

    first = _audit(world, world["planted"])
    monkeypatch.setattr(_api, "generate_rows", lambda *a, **k: pytest.fail("amplified answers generated again"))
    again = _audit(world, world["planted"])
    assert [p["responses_sha256"] for p in again.probe_sets] == [p["responses_sha256"] for p in first.probe_sets]
    base, ft = alignment.load_model(world["base"]), alignment.load_model(world["planted"])
    seqs = amplified_responses(base, ft, [load_probe_set(p, 12) for p in PROBES], alpha=1.0, max_new_tokens=12)
    assert responses_sha256(seqs) == {p["name"]: p["responses_sha256"]["amplified"] for p in first.probe_sets}


def test_the_training_monitor_amplifies_an_in_memory_model_against_the_base(world):
    """BaseReference.score: the model has no handle, so its answers are generated (uncached) beside
    the base model and equal amplified_responses' for the same weights."""
    base = alignment.load_model(world["base"])
    ref = prepare_reference(base, world["saes"], probes=PROBES, config=AuditConfig(concepts=[world["concept"]], **CFG))
    ft = alignment.load_model(world["planted"], base=world["base"])
    rep = ref.score(ft.model)
    assert rep.reads == ["same", "own", "amplified"] and rep.behaviour is not None
    want = amplified_responses(base, ft, [load_probe_set(p, 12) for p in PROBES], alpha=1.0, max_new_tokens=12, use_cache=False)
    assert {p["name"]: p["responses_sha256"]["amplified"] for p in rep.probe_sets} == responses_sha256(want)


# -- settings ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0, -1, 0.0, math.nan, math.inf, -math.inf])
def test_a_bad_alpha_is_refused_before_any_model_loads(world, alpha, monkeypatch):
    monkeypatch.setattr("neuronlens.pipeline._reference.response_sequences", lambda *a, **k: pytest.fail("long work started"))
    with pytest.raises(ConfigError, match="amplify_alpha"):
        AuditConfig(amplify_alpha=alpha).validate()
    base, ft = alignment.load_model(world["base"]), alignment.load_model(world["planted"])
    with pytest.raises(ConfigError, match="amplify_alpha"):
        alignment.compare_models(base, ft, world["saes"], probes=PROBES, config=AuditConfig(amplify_alpha=alpha))
    assert not base.is_loaded and not ft.is_loaded


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_the_cli_refuses_a_bad_alpha_with_exit_2_in_cli_terms(value, monkeypatch, capsys):
    from test_cli_config import run_cli

    code, _, err = run_cli(monkeypatch, capsys, "audit", "--base", "B", "--ft", "F", "--amplify-alpha", value)
    assert code == 2 and "--amplify-alpha" in err and "amplify_alpha=" not in err, err


@pytest.mark.parametrize("settings,match", [
    (dict(score_reads=["same", "amplified"], amplify_alpha=None), r"(?s)names 'amplified', which this audit does not run.*amplify_alpha=1.0"),
    (dict(score_reads=["own"], own_responses=False), r"(?s)names 'own'.*own_responses=True"),
    (dict(score_reads=["amplifed"]), r"(?s)names 'amplifed'.*Use only the reads same, own, amplified"),
    (dict(score_reads=[]), "empty"),
    (dict(score_reads=["same", "same"]), "repeats"),
])
def test_score_reads_must_name_reads_the_audit_runs(world, settings, match, monkeypatch):
    monkeypatch.setattr("neuronlens.pipeline._reference.response_sequences", lambda *a, **k: pytest.fail("long work started"))
    with pytest.raises(ConfigError, match=match):
        alignment.compare_models(world["base"], str(world["planted"]), world["saes"], probes=PROBES, config=AuditConfig(**{"amplify_alpha": 1.0, **settings}))


def test_amplify_alpha_none_turns_the_read_off(world):
    rep = _audit(world, world["planted"], amplify_alpha=None)
    assert rep.reads == ["same", "own"] and all("amplified" not in p["responses_sha256"] for p in rep.probe_sets)
    assert rep.behaviour.read == "own" and [r.answers for r in rep.behaviour.rates] == ["base", "own"]


# -- the evidence in every output ----------------------------------------------------------------------------------
def test_report_round_trip_keeps_the_evidence_and_old_reports_load_without_it(planted, tmp_path):
    rep = planted["scored"]
    path = rep.save(tmp_path / "new" / "report.json")
    back = alignment.AuditReport.load(path)
    assert back.behaviour == rep.behaviour and back.summary() == rep.summary()
    data = json.loads(path.read_text())
    rates = {r["answers"]: r for r in data["behaviour"]["rates"]}
    assert set(rates) == {"base", "own", "amplified"} and rates["amplified"]["n_answers"] == 24
    del data["behaviour"], data["config"]["amplify_alpha"], data["config"]["score_reads"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps(data))
    old = alignment.AuditReport.load(tmp_path / "old" / "report.json")
    assert old.behaviour is None and old.config.amplify_alpha is None and old.config.score_reads == ["same", "own"]
    assert "Behaviour" not in old.summary()
    data["behaviour"] = {"read": "amplified"}  # garbled: no label, no rates
    (tmp_path / "old" / "report.json").write_text(json.dumps(data))
    with pytest.raises(NeuronLensError, match="garbles a field"):
        alignment.AuditReport.load(tmp_path / "old" / "report.json")


def test_summary_html_certificate_and_pdf_show_the_evidence(planted, tmp_path):
    rep = planted["scored"]
    ev = rep.behaviour
    example = ev.examples[0]
    summary = rep.summary()
    print(summary)
    assert "Behaviour (rule-based scorer, 24 answers each): harm base" in summary
    assert "Amplified answers (\u03b1=1) most towards Differ talk" in summary and "(base: \"" in summary
    html = Path(rep.to_html(tmp_path / "report.html")).read_text()
    assert "What the fine-tune says (behavioural evidence)" in html and "amplified answers (\u03b1=1)" in html
    assert example.prompt.replace("'", "&#x27;") in html
    cert = build_certificate(rep)  # the schema check is part of it
    assert cert.body["behaviour"] == json.loads(json.dumps(ev.to_dict()))
    assert all(set(p["responses_sha256"]) == {"same", "own", "amplified"} for p in cert.body["probe_sets"])
    if shutil.which("pdftotext") is None:
        pytest.skip("no pdftotext (poppler-utils) to read the PDF")
    pdf = export_certificate(rep, formats=["pdf"], out_dir=tmp_path / "cert")["pdf"]
    text = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout.split())
    assert "What the fine-tune says (behavioural evidence)" in text and "most towards Differ talk" in text
    assert "amplified" in text and rep.probe_sets[0]["responses_sha256"]["amplified"] in text
