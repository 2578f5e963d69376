"""The Activation Difference Lens in every report (issue #18 part 4): the audit runs it on the
models it holds resident, the report carries it (JSON round trip; older reports load without it),
and the summary, HTML, certificate body and PDF show it; --no-learned-lens leaves it out."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from html import escape
from pathlib import Path

import pytest
import torch

import tiny
from conftest import audit_cli, random_sae
from neuronlens import alignment
from neuronlens.cli._config import flags
from neuronlens.certificate import export_certificate, schema_problems
from neuronlens.learned import LensRun, what_it_learned
from neuronlens.pipeline import AUDIT_LENS, prepare_reference
from neuronlens.saes import SAESet
from test_certificate import statement_of
from test_heatmap import with_risk

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = alignment.AuditConfig(max_prompts_per_set=6, max_new_tokens=8)
DRIFT = ["drift"]
LAYER = 1
"""The planted layer: the lens's default layer of a 4-layer model, int(0.5 * 3)."""
TITLE = "What this fine-tune appears to have been trained on"
POPPLER = shutil.which("pdftotext") is not None


def _word_token(tok) -> int:
    """A token that decodes to a plain word (so the tests can look for it in rendered text)."""
    return next(i for i in range(100, len(tok)) if tok.decode([i]).strip().isalpha() and len(tok.decode([i]).strip()) >= 4)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tok) -> dict:
    """A base and a full-weight fine-tune whose residual after layer LAYER is shifted along the
    unembedding row of one word token at every position (a down_proj bias, zero elsewhere)."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("planted")
    base = tiny.tiny_llama(tok)
    tiny.save(base, tok, root / "base")
    cfg = base.config.to_dict()
    cfg["mlp_bias"] = True
    ft = LlamaForCausalLM(type(base.config).from_dict(cfg)).eval()
    ft.load_state_dict(base.state_dict(), strict=False)
    token = _word_token(tok)
    row = base.lm_head.weight[token].detach()
    with torch.no_grad():
        for name, p in ft.named_parameters():
            if name.endswith("bias"):
                p.zero_()
        ft.model.layers[LAYER].mlp.down_proj.bias.copy_(row / row.norm())
    tiny.save(ft, tok, root / "ft")
    return {"base": root / "base", "ft": root / "ft", "token": token, "word": tok.decode([token])}


@pytest.fixture(scope="module")
def saes():
    return SAESet({1: random_sae(64, 128, 1, seed=1), 3: random_sae(64, 128, 3, seed=3)})


def _audit(pair: dict, saes, **kw) -> alignment.AuditReport:
    return alignment.compare_models(alignment.load_model(pair["base"]), alignment.load_model(pair["ft"]), saes,
                                    probes=["finance"], metrics=DRIFT, config=CFG, **kw)


@pytest.fixture(scope="module")
def audited(planted, saes, tmp_path_factory) -> tuple[alignment.AuditReport, Path]:
    rep = _audit(planted, saes)
    return rep, rep.save(tmp_path_factory.mktemp("learned-report") / "report.json")


def test_the_planted_token_is_promoted_in_the_report_and_its_summary(audited, planted):
    rep, _ = audited
    lens = rep.learned
    assert lens is not None and [layer.layer for layer in lens.layers] == [LAYER]
    pooled = lens.layers[0].pooled
    assert pooled.promoted[0].token_id == planted["token"]
    assert pooled.suppressed[0].token_id != planted["token"]
    assert 1 <= lens.n_texts <= AUDIT_LENS.n_texts and f"{AUDIT_LENS.n_texts} SAE-corpus prompts" in lens.text_source
    steering = lens.layers[0].steering
    assert len(steering.steered) == len(steering.unsteered) == 3 and steering.steered != steering.unsteered
    assert rep.timings["learned_s"] > 0
    line = next(x for x in rep.summary().splitlines() if x.startswith("What it appears to have learned"))
    assert line.startswith(f"What it appears to have learned (layer {LAYER}): promoted tokens {planted['word']!r}")
    assert "; steered sample: \"" in line


def test_the_lens_survives_the_json_round_trip(audited):
    rep, path = audited
    back = alignment.AuditReport.load(path)
    assert back.learned == rep.learned  # every field but the float64 sums, which stay out of the JSON
    assert back.learned.layers[0].sums is None and back.summary() == rep.summary()
    data = json.loads(path.read_text())
    assert data["config"]["learned_lens"] is True
    assert data["learned"]["layers"][0]["pooled"]["promoted"][0]["token_id"] == rep.learned.layers[0].pooled.promoted[0].token_id


def test_html_shows_tokens_and_steered_beside_unsteered_samples(audited, planted, tmp_path):
    rep, _ = audited
    html = rep.to_html(tmp_path / "report.html").read_text()
    steering = rep.learned.layers[0].steering
    assert f"<h2>{TITLE}</h2>" in html and "carries no weight in the verdict" in html
    assert escape(repr(planted["word"])) in html
    for prompt, steered, unsteered in zip(steering.prompts, steering.steered, steering.unsteered):
        assert f"<tr><td>{escape(prompt)}</td><td>{escape(steered)}</td><td>{escape(unsteered)}</td></tr>" in html


def test_certificate_body_is_valid_and_the_pdf_shows_the_section(audited, planted, tmp_path):
    rep = with_risk(alignment.AuditReport.load(audited[1]))
    paths = export_certificate(rep, formats=["json", "pdf"], out_dir=tmp_path)
    statement = statement_of(paths["json"])
    assert schema_problems(statement) == []
    learned = statement["predicate"]["learned"]
    assert learned["verdict_weight"] == "none" and learned["layers"][0]["layer"] == LAYER
    assert learned["layers"][0]["promoted"][0]["token_id"] == planted["token"]
    samples = learned["layers"][0]["steering"]["samples"]
    assert [s["steered"] for s in samples] == list(rep.learned.layers[0].steering.steered)
    if POPPLER:
        text = subprocess.run(["pdftotext", "-layout", str(paths["pdf"]), "-"], capture_output=True, text=True, check=True).stdout
        flat = " ".join(text.split())
        assert TITLE in flat and repr(planted["word"]) in flat and f"Layer {LAYER} \u00b7 shift" in flat
        assert "Tell me a story?" in flat and "unsteered" in flat


def test_an_older_report_without_the_lens_loads_and_renders_without_it(audited, tmp_path):
    data = json.loads(audited[1].read_text())
    del data["learned"], data["config"]["learned_lens"], data["stats_file"]
    (tmp_path / "report.json").write_text(json.dumps(data))
    old = alignment.AuditReport.load(tmp_path / "report.json")
    assert old.learned is None
    assert "What it appears" not in old.summary() and TITLE not in old.to_html(tmp_path / "old.html").read_text()
    statement = statement_of(export_certificate(with_risk(old, far_latent=False), formats=["json"], out_dir=tmp_path / "c")["json"])
    assert statement["predicate"]["learned"] is None and schema_problems(statement) == []


def test_no_learned_lens_flag_leaves_it_out(perturbed_pair, tmp_path):
    assert flags()["learned_lens"] == "--learned-lens"
    done = audit_cli(perturbed_pair, tmp_path / "out", tmp_path / "cache", extra=("--no-learned-lens",))
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: a verdict that is not a pass (random SAEs)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["learned"] is None and data["config"]["learned_lens"] is False and "learned_s" not in data["timings"]
    assert not any("learned_lens" in note for note in data["risk"]["notes"])  # not a setting the threshold depends on
    assert "What it appears" not in done.stdout + done.stderr


def _lora(tmp_path: Path, base_dir: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    pm = get_peft_model(alignment.load_model(base_dir).model,
                        LoraConfig(r=4, target_modules=["o_proj", "down_proj"], init_lora_weights=False, lora_alpha=16))
    pm.save_pretrained(str(tmp_path / "adapter"))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    return tmp_path / "adapter"


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's own read
def test_an_adapter_is_read_on_the_one_resident_base(tmp_path, tiny_base_dir, saes, monkeypatch):
    """The audit's lens of a PEFT adapter runs on the base weights it already holds (loaded once),
    toggling the adapter, and equals the stand-alone lens of the same pair."""
    import neuronlens.models._handle as handle_module

    adapter = _lora(tmp_path, tiny_base_dir)
    loads: list[str] = []
    real = handle_module._load_weights
    monkeypatch.setattr(handle_module, "_load_weights", lambda h: loads.append(h.kind) or real(h))
    rep = alignment.compare_models(alignment.load_model(tiny_base_dir), alignment.load_model(adapter), saes,
                                   probes=["finance"], metrics=DRIFT, config=CFG)
    assert loads == ["folder"]  # the base, once; the adapter was injected into it
    monkeypatch.setattr(handle_module, "_load_weights", real)
    alone = what_it_learned(alignment.load_model(tiny_base_dir), alignment.load_model(adapter),
                            replace(AUDIT_LENS, token_budget=CFG.token_budget))
    a, b = rep.learned.layers[0], alone.layers[0]
    assert a.sums.pooled_diff().norm() > 1e-4
    assert torch.allclose(a.sums.pooled_diff(), b.sums.pooled_diff(), rtol=1e-4, atol=1e-6 * float(b.sums.pooled_diff().norm()))
    assert [t.token_id for t in a.pooled.promoted[:5]] == [t.token_id for t in b.pooled.promoted[:5]]
    assert a.steering.unsteered == b.steering.unsteered  # the same base model, adapter off


def test_a_repeated_audit_takes_the_lens_from_the_cache(planted, saes, monkeypatch):
    first = _audit(planted, saes)

    def refuse(*_a, **_k):
        raise AssertionError("the lens ran again")

    monkeypatch.setattr(LensRun, "__init__", refuse)
    again = _audit(planted, saes)
    assert again.learned == first.learned


def test_the_training_monitor_runs_no_lens(planted, saes):
    ref = prepare_reference(alignment.load_model(planted["base"]), saes, probes=["finance"], metrics=DRIFT, config=CFG)
    rep = ref.score(alignment.load_model(planted["ft"]).model)
    assert rep.learned is None and "learned_s" not in rep.timings


def test_a_lens_that_cannot_read_the_models_says_how_to_audit_without_it(planted, saes, monkeypatch):
    import neuronlens.learned._run as lens_run
    from neuronlens.errors import ModelLoadError

    def no_norm(model):
        raise ModelLoadError("Could not find the final norm of TinyLM.", "Use a Llama-style causal LM.")

    monkeypatch.setattr(lens_run, "final_norm", no_norm)
    with pytest.raises(ModelLoadError, match=r"Activation Difference Lens\): Could not find the final norm") as exc:
        _audit(planted, saes)
    assert "--no-learned-lens" in exc.value.fix
    rep = alignment.compare_models(alignment.load_model(planted["base"]), alignment.load_model(planted["ft"]), saes,
                                   probes=["finance"], metrics=DRIFT, config=replace(CFG, learned_lens=False))
    assert rep.learned is None and "learned_s" not in rep.timings


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's own read
def test_every_report_of_a_multi_model_audit_has_its_own_lens(planted, saes, tmp_path):
    from neuronlens.pipeline import compare_many

    adapter = _lora(tmp_path, planted["base"])
    full, lora = compare_many(alignment.load_model(planted["base"]), [planted["ft"], adapter], saes, probes=["finance"],
                              metrics=DRIFT, config=CFG)
    assert full.learned.layers[0].pooled.promoted[0].token_id == planted["token"]
    assert (full.learned.ft, lora.learned.ft) == (full.ft["name"], lora.ft["name"])
    assert lora.learned.layers[0].pooled.diff_norm > 0 and lora.learned != full.learned
