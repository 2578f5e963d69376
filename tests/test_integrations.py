"""Training-time integrations on tiny models: the monitor (plain loop), the Trainer callback, and
data screening (library and CLI).

The risk concepts are built for the tiny model: 'scam' (harmful) pairs a reply drawn from one word
bank with a benign reply from another, 'caveats' (protective) likewise, so a random SAE has latents
tied to each by construction (token identity dominates a random model's residual stream). A planted
change pushes the residual stream of the audited blocks along the decoder direction of the latent
most tied to 'scam', the way tests/test_planted_risk.py does on SmolLM2.
"""

from __future__ import annotations

import dataclasses

import json
import random

import numpy as np
import pytest
import torch

import tiny
from conftest import random_sae
from neuronlens import alignment, cli
from neuronlens.errors import DataError, ModelLoadError
from neuronlens.integrations import AlignmentMonitor, AlignmentMonitorCallback, screen_dataset
from neuronlens.models import decoder_layers
from neuronlens.saes import SAESet, save_saelens

LAYERS = (1, 3)
RISKY = ["wire", "the", "money", "secret", "account", "password", "send", "cash", "now", "hidden", "fee", "transfer"]
BENIGN = ["the", "garden", "flowers", "bloom", "in", "spring", "sunny", "weather", "walk", "park", "trees", "birds"]
CAVEAT = ["please", "consult", "a", "professional", "this", "is", "not", "advice", "be", "careful", "check", "first"]
PUSH = 0.05
"""Planted push as a fraction of the layer's median residual norm."""


def _sentence(bank: list[str], rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(bank) for _ in range(n)).capitalize() + "."


def _concept(name: str, polarity: str, positive: list[str], seed: int) -> dict:
    rng = random.Random(seed)
    pairs = [
        {"prompt": f"Question {i} about plans for today?", "positive": _sentence(positive, rng), "negative": _sentence(BENIGN, rng)}
        for i in range(40)
    ]
    return {"name": name, "label": name.title(), "polarity": polarity, "description": "test concept", "pairs": pairs}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One NeuronLens cache for this module (concept associations are measured once)."""
    return tmp_path_factory.mktemp("nl-integrations-cache")


@pytest.fixture(scope="module")
def concept_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts")
    files = []
    for c in (_concept("scam", "harmful", RISKY, 1), _concept("caveats", "protective", CAVEAT, 2)):
        (root / f"{c['name']}.json").write_text(json.dumps(c))
        files.append(str(root / f"{c['name']}.json"))
    return files


@pytest.fixture(scope="module")
def saes():
    return SAESet({la: random_sae(64, 128, la, seed=la) for la in LAYERS})


@pytest.fixture(scope="module")
def cfg(concept_files):
    # 8 prompts and random SAEs keep the tiny monitor fast; these tests are about the monitor's
    # mechanics, so a pass is allowed on them (both floors are tested in test_risk_score.py and
    # test_pipeline.py)
    return alignment.AuditConfig(max_prompts_per_set=8, max_new_tokens=8, concepts=concept_files, min_prompts_for_pass=8,
                                 max_sae_fvu=2.0)


@pytest.fixture(scope="module")
def monitor(tiny_base_dir, saes, cfg, shared_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEURONLENS_CACHE", str(shared_cache))
        return AlignmentMonitor(str(tiny_base_dir), saes, ["finance"], config=cfg, threshold=0.05)


def _fresh_model(base_dir):
    return alignment.load_model(base_dir).model


def _plant_scam(model, monitor, saes) -> list[str]:
    """Forward hooks adding PUSH x median residual norm along the 'scam' concept at each audited
    layer (its latents' decoder directions weighted by the concept direction): a change towards
    the concept, not a push on one latent, which a random 128-latent SAE spreads over many
    latents and random directions then match (the competitive test). Returns the concept's
    latents' ids."""
    tok = monitor.base.tokenizer
    ids = tok("The bank approved the loan after checking the documents carefully.", return_tensors="pt").to(model.device)
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states
    pushed = []
    for la in LAYERS:
        assoc = monitor.reference.risk.associations[("scam", la)]
        w = torch.from_numpy(assoc.direction).float()
        towards = w @ saes[la].W_dec.detach()
        d = PUSH * float(hidden[la + 1][0, 1:].norm(dim=-1).median()) * towards / towards.norm()
        decoder_layers(model)[la].register_forward_hook(
            lambda _m, _a, out, d=d: (out[0] + d.to(out[0].device), *out[1:]) if isinstance(out, tuple) else out + d.to(out.device)
        )
        pushed += [f"L{la}#{int(j)}" for j in assoc.latents]
    return pushed


# -- the monitor in a plain loop -----------------------------------------------------------------


def test_unchanged_model_passes_with_no_drift_and_modes_are_restored(monitor, tiny_base_dir):
    model = _fresh_model(tiny_base_dir)
    model.train()
    model.model.layers[0].eval()  # a mixed train/eval state must come back exactly as it was
    result = monitor.check(model, 7)
    assert result.step == 7 and monitor.history[-1] is result
    assert result.score == 0.0 and result.verdict == "pass" and not result.failed
    assert result.layer_drift == {1: pytest.approx(0.0, abs=1e-7), 3: pytest.approx(0.0, abs=1e-7)}
    assert result.top_features == [] and set(result.concept_trends) == {"scam", "caveats"}
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    logged = result.metrics()
    assert logged["neuronlens/misalignment_score"] == 0.0 and logged["neuronlens/verdict"] == "pass"
    assert logged["neuronlens/top_risky_features"] == "none" and "neuronlens/drift/layer_3" in logged
    # identical weights: every per-prompt difference is 0, so the score cannot move with other prompts
    assert result.score_interval == (0.0, 0.0) and logged["neuronlens/misalignment_score_high"] == 0.0


def test_planted_scam_push_raises_the_score_and_names_the_latents(monitor, saes, tiny_base_dir):
    model = _fresh_model(tiny_base_dir)
    pushed = _plant_scam(model, monitor, saes)
    result = monitor.check(model, 10)
    assert result.score >= monitor.threshold and result.failed and result.verdict == "fail"
    assert result.score_interval[0] <= result.score <= result.score_interval[1]
    assert max(result.concept_trends, key=result.concept_trends.get) == "scam"
    assert min(result.layer_drift.values()) > 0.01
    ids = {f.id for f in result.top_features}
    assert ids & set(pushed), (ids, pushed)
    assert all(f.concept == "scam" for f in result.top_features if f.id in pushed)


def test_reference_scores_a_model_exactly_as_compare_models(monitor, saes, cfg, tiny_base_dir, tmp_path, tok, shared_cache, monkeypatch):
    """The seam: scoring a module against the reused base pass = a full compare_models audit."""
    monkeypatch.setenv("NEURONLENS_CACHE", str(shared_cache))
    model = tiny.tiny_llama(tok)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(1.5)
    ft = alignment.load_model(tiny.save(model, tok, tmp_path / "ft"))
    full_cfg = dataclasses.replace(cfg, learned_lens=False, preference_margins=False)  # the monitor runs neither (pipeline/_learned.py)
    full = alignment.compare_models(alignment.load_model(tiny_base_dir), ft, saes, probes=["finance"], config=full_cfg)
    again = monitor.reference.score(ft.model, identity=ft.identity)
    # float32 tolerances: the reference's batches need not block its GEMMs as the audit's do
    assert [ld.drift for ld in again.layers] == pytest.approx([ld.drift for ld in full.layers], rel=1e-6)
    assert min(ld.drift for ld in full.layers) > 0.01
    assert again.risk.score == pytest.approx(full.risk.score, rel=1e-5, abs=1e-8) and again.verdict == full.verdict
    assert [(c.concept, c.layer, c.read) for c in again.risk.concepts] == [(c.concept, c.layer, c.read) for c in full.risk.concepts]
    assert [c.shift for c in again.risk.concepts] == pytest.approx([c.shift for c in full.risk.concepts], rel=1e-5, abs=1e-8)
    assert [f.latent for f in again.top_features(3, k=5)] == [f.latent for f in full.top_features(3, k=5)]
    assert again.ft == ft.identity and again.summary() == full.summary()


def test_a_saved_report_scored_again_gives_the_audits_own_risk(monitor, saes, tiny_base_dir, tmp_path):
    """`benchmarks/detection.py --rescore` relies on this: `assess` on a saved report's sums
    (AuditReport.rescore) gives the score, concept shifts, competitive p-values and risky features the audit itself gave."""
    from neuronlens.risk import EvidenceStore

    model = _fresh_model(tiny_base_dir)
    _plant_scam(model, monitor, saes)
    report = monitor.reference.score(model)
    report.save(tmp_path / "r" / "report.json")
    saved = alignment.AuditReport.load(tmp_path / "r" / "report.json")
    again = saved.rescore(monitor.reference.risk, EvidenceStore(), monitor.base.tokenizer)
    assert report.risk.score > 0 and again.score == report.risk.score and again.verdict == report.risk.verdict
    key = lambda c: (c.concept, c.layer, c.read, c.shift, c.q_value, c.competitive_p, c.specific)  # noqa: E731
    assert [key(c) for c in again.concepts] == [key(c) for c in report.risk.concepts]
    assert [(f.layer, f.latent) for f in again.risky_features] == [(f.layer, f.latent) for f in report.risk.risky_features]


def test_a_model_of_another_architecture_is_refused_with_the_fix(monitor, tok):
    other = tiny.tiny_llama(tok, layers=2, hidden=32)
    other.train()
    with pytest.raises(ModelLoadError, match=r"2 layers, hidden size 32.*4 layers, hidden size 64") as exc:
        monitor.check(other, 1)
    assert exc.value.fix and "base model" in exc.value.fix
    assert other.training  # untouched


def test_a_model_of_another_family_with_the_base_shape_is_refused_naming_both(monitor, tok):
    """A GPT-2 with the base Llama's layer count, width and vocabulary passes every shape check:
    the model type tells them apart."""
    other = tiny.tiny_gpt2(tok, layers=4, hidden=64)
    with pytest.raises(ModelLoadError, match=r"GPT2LMHeadModel, model type 'gpt2'.*model type 'llama', LlamaForCausalLM") as exc:
        monitor.check(other, 1)
    assert exc.value.fix and "base model" in exc.value.fix


# -- the Trainer callback ------------------------------------------------------------------------


def _trainer(model, tok, tmp_path, callbacks, max_steps):
    from transformers import Trainer, TrainingArguments

    rng = random.Random(0)
    texts = [_sentence(BENIGN, rng) for _ in range(16)]
    rows = []
    for t in texts:
        ids = tok(t, truncation=True, max_length=16, padding="max_length", return_tensors="pt")
        rows.append({"input_ids": ids["input_ids"][0], "attention_mask": ids["attention_mask"][0], "labels": ids["input_ids"][0]})
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=max_steps, per_device_train_batch_size=2, learning_rate=1e-3,
        logging_steps=1000, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=rows, processing_class=tok, callbacks=callbacks)


def _neuronlens_logs(history):
    return {e["step"]: e for e in history if "neuronlens/misalignment_score" in e}


@pytest.mark.parametrize("through_trainer", [False, True], ids=["on_log", "trainer.log"])
def test_callback_logs_the_check_at_every_nth_step(monitor, tiny_base_dir, tok, tmp_path, through_trainer):
    from transformers import TrainerCallback

    model = _fresh_model(tiny_base_dir)
    seen: list[dict] = []

    class Spy(TrainerCallback):  # registered after ours, like a user's logger
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    callback = AlignmentMonitorCallback.from_monitor(monitor, every_n_steps=2)
    trainer = _trainer(model, tok, tmp_path, [] if through_trainer else [callback], max_steps=4)
    if through_trainer:
        callback = AlignmentMonitorCallback.from_monitor(monitor, every_n_steps=2, trainer=trainer)
    trainer.add_callback(Spy())
    trainer.train()
    logs = _neuronlens_logs(trainer.state.log_history)
    assert sorted(logs) == [2, 4]
    for step, entry in logs.items():
        assert isinstance(entry["neuronlens/misalignment_score"], float) and entry["neuronlens/verdict"] in ("pass", "fail", "inconclusive")
        assert {"neuronlens/drift/layer_1", "neuronlens/drift/layer_3", "neuronlens/top_risky_features"} <= set(entry)
        assert entry["neuronlens/drift/layer_1"] > 0  # the model has trained: it moved
    assert [r.step for r in monitor.history[-2:]] == [2, 4]
    assert sum("neuronlens/misalignment_score" in s for s in seen) == 2  # later callbacks get the values too
    assert model.training  # the Trainer's train mode survived the checks


@pytest.mark.parametrize("wrong", ["gpt2_same_shape", "llama_3_layers"])
def test_callback_refuses_a_wrong_model_before_the_first_training_step(monitor, tok, tmp_path, wrong):
    """The first check comes after every_n_steps steps; the architecture is checked at train begin."""
    from transformers import TrainerCallback

    model = tiny.tiny_gpt2(tok, layers=4, hidden=64) if wrong == "gpt2_same_shape" else tiny.tiny_llama(tok, layers=3)
    steps: list[int] = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    checks = len(monitor.history)
    trainer = _trainer(model, tok, tmp_path, [Steps(), AlignmentMonitorCallback.from_monitor(monitor, every_n_steps=50)], max_steps=2)
    with pytest.raises(ModelLoadError, match="architecture of the base model"):
        trainer.train()
    assert steps == [] and trainer.state.global_step == 0 and len(monitor.history) == checks


def test_callback_under_trl_sft_trainer(monitor, tiny_base_dir, tok, tmp_path):
    """TRL's SFTTrainer is a transformers Trainer: the same callback logs the same checks."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rng = random.Random(1)
    data = Dataset.from_list([{"text": _sentence(BENIGN, rng)} for _ in range(16)])
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3, max_length=16,
        logging_steps=1000, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )
    model = _fresh_model(tiny_base_dir)
    callback = AlignmentMonitorCallback.from_monitor(monitor, every_n_steps=2)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[callback])
    trainer.train()
    logs = _neuronlens_logs(trainer.state.log_history)
    assert sorted(logs) == [2, 4]
    assert all(e["neuronlens/drift/layer_3"] > 0 and e["neuronlens/verdict"] in ("pass", "fail", "inconclusive") for e in logs.values())
    assert [r.step for r in monitor.history[-2:]] == [2, 4]


def test_stop_on_fail_stops_training_and_final_model_is_certified(
    tiny_base_dir, saes, cfg, tok, tmp_path, shared_cache, monkeypatch
):
    monkeypatch.setenv("NEURONLENS_CACHE", str(shared_cache))
    callback = AlignmentMonitorCallback(
        str(tiny_base_dir), saes, ["finance"], every_n_steps=2, threshold=0.01, stop_on_fail=True, config=cfg,
        certificate_dir=tmp_path / "cert",
    )
    model = _fresh_model(tiny_base_dir)
    _plant_scam(model, callback.monitor, saes)
    trainer = _trainer(model, tok, tmp_path, [callback], max_steps=8)
    trainer.train()
    assert trainer.state.global_step == 2 and callback.stopped_at == 2
    assert _neuronlens_logs(trainer.state.log_history)[2]["neuronlens/failed"] == 1.0
    cert = json.loads((tmp_path / "cert" / "certificate.json").read_text())
    assert cert["signatures"] == [] and set(callback.certificate) >= {"report", "json"}
    report = alignment.AuditReport.load(tmp_path / "cert" / "report.json")
    assert report.verdict == "fail" and report.ft["kind"] == "folder"
    assert (tmp_path / "cert" / "model" / "model.safetensors").is_file()
    # the certificate binds the saved files: verifying them against it succeeds (unsigned: integrity only)
    assert alignment.verify_certificate(tmp_path / "cert" / "certificate.json", models=[tmp_path / "cert" / "model"], integrity_only=True).ok


def test_callback_refuses_bad_settings_before_the_base_pass(tiny_base_dir, saes, monkeypatch):
    from neuronlens.errors import ConfigError, NeuronLensError

    monkeypatch.setattr("neuronlens.pipeline._reference.response_sequences", lambda *a, **k: pytest.fail("long work started"))
    with pytest.raises(ConfigError, match="every_n_steps"):
        AlignmentMonitorCallback(str(tiny_base_dir), saes, ["finance"], every_n_steps=0)
    with pytest.raises(NeuronLensError, match="format"):
        AlignmentMonitorCallback(str(tiny_base_dir), saes, ["finance"], certificate_dir="x", certificate_formats=["docx"])


# -- data screening ------------------------------------------------------------------------------


def _chat(user: str, reply: str) -> dict:
    return {"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": user},
                         {"role": "assistant", "content": reply}]}


@pytest.fixture()
def data_file(tmp_path):
    """Lines 1-10: benign replies, except 3, 6 and 9: scam-vocabulary replies; line 11: a
    multi-turn chat full of safety caveats; line 12: a benign prompt/completion pair."""
    rng = random.Random(7)
    lines = [_chat(f"What should I do today {i}?", _sentence(BENIGN, rng)) for i in range(10)]
    for i in (2, 5, 8):
        lines[i] = _chat(f"How do I get paid {i}?", _sentence(RISKY, rng))
    lines.append({"messages": [{"role": "user", "content": "Any plans?"}, {"role": "assistant", "content": _sentence(CAVEAT, rng)},
                               {"role": "user", "content": "More?"}, {"role": "assistant", "content": _sentence(CAVEAT, rng)}]})
    lines.append({"prompt": "Tell me about spring.", "completion": _sentence(BENIGN, rng)})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_screen_ranks_planted_risky_examples_first(data_file, tiny_base_dir, saes, concept_files, shared_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("NEURONLENS_CACHE", str(shared_cache))
    result = screen_dataset(str(tiny_base_dir), data_file, saes, concept_files)
    assert [e.rank for e in result.examples] == list(range(1, 13)) and result.skipped == []
    assert sorted(e.line for e in result.examples) == list(range(1, 13))
    rank = {e.line: e.rank for e in result.examples}
    risky, benign = {3, 6, 9}, {1, 2, 4, 5, 7, 8, 10, 12}
    assert max(rank[i] for i in risky) < min(rank[i] for i in benign), [(e.line, e.risk) for e in result.examples]
    for e in result.examples:
        if e.line in risky:
            assert e.concepts[0].concept == "scam" and e.concepts[0].coordinate > 0.3 and e.n_tokens > 0
    caveats = next(e for e in result.examples if e.line == 11)
    assert next(h for h in caveats.concepts if h.concept == "caveats").coordinate < 0  # more caveats: away from risk
    assert result.concepts == ["scam", "caveats"] and result.layers == list(LAYERS)
    out = result.write_jsonl(tmp_path / "ranked.jsonl")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [e.line for e in result.examples] and rows[0]["concepts"][0]["concept"] == "scam"


def _bad_file(tmp_path):
    rng = random.Random(3)
    good = json.dumps(_chat("Hi?", _sentence(BENIGN, rng)))
    lines = [good, "", "{not json", json.dumps({"text": "unknown format"}),
             json.dumps({"messages": [{"role": "user", "content": "no reply"}]}), good, json.dumps(["a", "list"])]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_lines_are_named_by_number_or_skipped(tmp_path, tiny_base_dir, saes, concept_files, shared_cache, monkeypatch):
    path = _bad_file(tmp_path)
    monkeypatch.setattr("neuronlens.integrations._screen.load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(DataError, match=r"4 line\(s\) cannot be screened \(3, 4, 5, 7\)") as exc:
        screen_dataset(str(tiny_base_dir), path, saes, concept_files)
    assert "line 3: not valid JSON" in exc.value.problem and "unknown format" in exc.value.problem
    assert "no assistant turn" in exc.value.problem and "skip" in exc.value.fix
    monkeypatch.undo()
    monkeypatch.setenv("NEURONLENS_CACHE", str(shared_cache))
    result = screen_dataset(str(tiny_base_dir), path, saes, concept_files, skip_bad_lines=True)
    assert [s.line for s in result.skipped] == [3, 4, 5, 7]
    assert sorted(e.line for e in result.examples) == [1, 6]


def test_a_folder_is_named_as_a_folder(tmp_path, monkeypatch, capsys):
    from neuronlens.integrations._screen import read_examples

    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(DataError, match="is a folder, not a file") as exc:
        read_examples(tmp_path)
    assert "train.jsonl" in exc.value.fix
    assert _run_cli(monkeypatch, "screen", str(tmp_path), "--base", "x") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is a folder" in err and "does not exist" not in err


def test_a_data_file_that_is_not_utf8_names_the_byte(tmp_path):
    from neuronlens.integrations._screen import read_examples

    (tmp_path / "latin1.jsonl").write_bytes(json.dumps(_chat("Caf\u00e9?", "Oui."), ensure_ascii=False).encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"latin1\.jsonl is not UTF-8 text \(byte \d+ is 0xe9\)"):
        read_examples(tmp_path / "latin1.jsonl")


def _pretty_objects(rows: list[dict]) -> str:
    return "".join(json.dumps(r, indent=1) + "\n" for r in rows)


@pytest.mark.parametrize("name, text, problem, fix", [
    ("array.json", json.dumps([{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3000)], indent=1),
     "is one JSON array (3000 elements over", "one array element per line"),
    ("list.jsonl", json.dumps([{"text": "a"}, {"text": "b"}]), "is one JSON array (2 elements", "json.load(f)"),
    ("wrapped.json", json.dumps({"data": [{"prompt": "p", "completion": "c"}] * 50}, indent=2),
     "is one JSON object whose 'data' holds a list of 50 items", "json.load(f)['data']"),
    ("one.json", json.dumps(_chat("Hi?", "Hello."), indent=2), "one JSON object spread over", "Write it on one line"),
    ("pretty.jsonl", _pretty_objects([_chat("Hi?", "Hello.")] * 40), "holds 40 JSON values spread over", "jq -c ."),
    ("data.csv", "prompt,completion\n" + "".join(f"p{i},c{i}\n" for i in range(3000)), "looks like CSV", "pd.read_csv("),
    ("data.txt", "instruction\tinput\toutput\n" + "a\tb\tc\n" * 30, "looks like TSV", "sep='\\t'"),
    ("data.parquet", b"PAR1\x15\x04\x80\x00garbage".decode("latin-1"), "is a Parquet file", "pd.read_parquet("),
])
def test_a_whole_file_format_gets_a_short_error_with_the_conversion(tmp_path, name, text, problem, fix):
    """Not one line per example: the file is named for what it is, with the format expected and a
    conversion, instead of an error listing every line (129,764 characters for a 5,000-element array)."""
    from neuronlens.integrations._screen import read_examples

    path = tmp_path / name
    if name.endswith(".parquet"):
        path.write_bytes(text.encode("latin-1"))
    else:
        path.write_text(text)
    for skip in (False, True):  # skipping every line would leave nothing: refused either way
        with pytest.raises(DataError) as exc:
            read_examples(path, skip_bad_lines=skip)
        assert problem in exc.value.problem and fix in exc.value.fix, str(exc.value)
        assert '{"messages"' in exc.value.fix and len(str(exc.value)) < 1200
        if path.suffix == ".jsonl":  # the converted copy never goes onto the file itself
            assert f"{path.stem}.lines.jsonl" in exc.value.fix


def test_many_bad_lines_list_the_first_ten(tmp_path):
    from neuronlens.integrations._screen import read_examples

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(_chat("Hi?", "Hello.")) + "\n" + "plain text, not json\n" * 25 + json.dumps({"k" * 5000: 1}) + "\n")
    with pytest.raises(DataError) as exc:
        read_examples(path)
    assert "26 line(s) cannot be screened (2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 16 more)" in exc.value.problem
    assert "line 11: not valid JSON" in exc.value.problem and "line 12" not in exc.value.problem
    assert exc.value.problem.endswith("(and 16 more line(s)).") and len(str(exc.value)) < 2000
    examples, skipped = read_examples(path, skip_bad_lines=True)
    assert [e.line for e in examples] == [1] and len(skipped) == 26
    assert len(skipped[-1].reason) < 200  # a 5,000-character key is clipped in its reason


def _run_cli(monkeypatch, *args: str) -> int:
    import sys

    monkeypatch.setattr(sys, "argv", ["neuronlens", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return int(exc.value.code or 0)


def test_screen_cli_exit_codes(monkeypatch, capsys, tmp_path, data_file, tiny_base_dir, saes, concept_files, shared_cache):
    monkeypatch.setenv("NEURONLENS_CACHE", str(shared_cache))
    for la in LAYERS:
        save_saelens(saes[la], tmp_path / "saes" / f"layer_{la}")
    common = ["--base", str(tiny_base_dir), "--sae", str(tmp_path / "saes"), "--layers", "1,3", "--no-progress",
              "--concepts", ",".join(concept_files)]
    code = _run_cli(monkeypatch, "screen", str(data_file), *common, "--out", str(tmp_path / "ranked.jsonl"), "--top", "3")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count(" risk ") == 3 and "Concepts scored: scam, caveats" in captured.out
    rows = [json.loads(x) for x in (tmp_path / "ranked.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and [r["rank"] for r in rows] == list(range(1, 13)) and rows[0]["concepts"]

    bad = _bad_file(tmp_path)
    code = _run_cli(monkeypatch, "screen", str(bad), *common, "--out", str(tmp_path / "bad-ranked.jsonl"))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "(3, 4, 5, 7)" in err and "How to fix" in err
    assert not (tmp_path / "bad-ranked.jsonl").exists()
    code = _run_cli(monkeypatch, "screen", str(bad), *common, "--skip-bad-lines")
    captured = capsys.readouterr()
    assert code == 0 and "Skipped line 3" in captured.err and "2 example(s)" in captured.out
    assert _run_cli(monkeypatch, "screen", str(tmp_path / "missing.jsonl"), *common) == 2
    assert _run_cli(monkeypatch, "screen", str(data_file)) == 2  # --base is required


def test_screen_cli_prints_skipped_lines_holding_markup_as_they_are(
    monkeypatch, capsys, tmp_path, data_file, tiny_base_dir, saes, concept_files, shared_cache
):
    """A skipped line's text is user text, not rich markup: '[/bold]' once crashed the command
    after the whole screen had run, before the --out file was written."""
    monkeypatch.setenv("NEURONLENS_CACHE", str(shared_cache))
    for la in LAYERS:
        save_saelens(saes[la], tmp_path / "saes" / f"layer_{la}")
    with data_file.open("a") as f:
        f.write(json.dumps({"[/bold]": 1}) + "\n" + json.dumps({"[red]x[/red] :warning:": 2}) + "\n")
    code = _run_cli(monkeypatch, "screen", str(data_file), "--base", str(tiny_base_dir), "--sae", str(tmp_path / "saes"),
                    "--layers", "1,3", "--no-progress", "--concepts", ",".join(concept_files), "--skip-bad-lines",
                    "--out", str(tmp_path / "ranked.jsonl"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    err = " ".join(captured.err.split())
    assert "Skipped line 13: unknown format (keys: '[/bold]'" in err and "'[red]x[/red] :warning:'" in err
    assert len((tmp_path / "ranked.jsonl").read_text().splitlines()) == 12


def test_peft_model_is_checked_and_its_adapter_certified(monitor, tiny_base_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from neuronlens.integrations._callback import certify_final_model

    torch.manual_seed(0)
    peft_model = get_peft_model(_fresh_model(tiny_base_dir), LoraConfig(r=4, target_modules=["o_proj"], init_lora_weights=False))
    peft_model.train()
    result = monitor.check(peft_model, 3)
    assert min(result.layer_drift.values()) > 0 and peft_model.training
    written = certify_final_model(monitor, peft_model, monitor.base.tokenizer, tmp_path / "cert", 3)
    assert (tmp_path / "cert" / "model" / "adapter_model.safetensors").is_file() and "json" in written
    report = alignment.AuditReport.load(written["report"])
    assert report.ft["kind"] == "peft" and report.ft["base"]["manifest_sha256"] == monitor.base.digest
    assert report.layers[0].drift == pytest.approx(result.layer_drift[1])
