"""Several fine-tunes of one base in one audit (compare_many; `neuronlens audit --ft A --ft B`,
`--ft-glob`): the same reports as separate audits, one base pass, every fine-tune checked before
it, and the CLI's subfolders, summary, plot and exit codes."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys

import pytest
import torch

import tiny
from conftest import random_sae
from neuronlens import alignment, cli
from neuronlens.errors import ModelLoadError
from neuronlens.pipeline import ONE_SIDE_READS
from neuronlens.saes import SAESet, save_saelens

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = alignment.AuditConfig(probes=["finance"], max_prompts_per_set=4, max_new_tokens=6, concepts=["fraud_scam", "disclaimers"])
ARGS = ("--layers", "1,2", "--probes", "finance", "--max-prompts", "4", "--max-new-tokens", "6",
        "--concepts", "fraud_scam,disclaimers", "--no-progress")


def _perturbed(tok, base_dir, folder, scale: float, seed: int):
    model = alignment.load_model(base_dir).model
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "o_proj" in name or "down_proj" in name:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return tiny.save(model, tok, folder)


def _adapter(base_dir, folder):
    from peft import LoraConfig, get_peft_model

    from neuronlens.models import peft_wrap_quietly

    torch.manual_seed(0)
    with peft_wrap_quietly():
        pm = get_peft_model(alignment.load_model(base_dir).model,
                            LoraConfig(r=4, target_modules=["o_proj", "down_proj"], init_lora_weights=False, lora_alpha=16))
    pm.save_pretrained(str(folder))
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tok, tiny_base_dir):
    """A training run's checkpoints: 100 and 1000 full-weight, 200 a PEFT adapter on the base
    (natural order 100, 200, 1000; plain string order would put 1000 second); SAEs at layers 1, 2."""
    root = tmp_path_factory.mktemp("run")
    _perturbed(tok, tiny_base_dir, root / "ckpts" / "checkpoint-100", 0.05, 1)
    _adapter(tiny_base_dir, root / "ckpts" / "checkpoint-200")
    _perturbed(tok, tiny_base_dir, root / "ckpts" / "checkpoint-1000", 0.2, 2)
    for layer in (1, 2):
        save_saelens(random_sae(64, 128, layer, seed=layer), root / "saes" / f"layer_{layer}")
    tiny.save(tiny.tiny_llama(tok, layers=3), tok, root / "other-arch")  # not a fine-tune of the base
    return root


def _fts(root):
    return [root / "ckpts" / n for n in ("checkpoint-100", "checkpoint-200", "checkpoint-1000")]


def _saes():
    return SAESet({la: random_sae(64, 128, la, seed=la) for la in (1, 2)})


def _count_base_passes(monkeypatch):
    from neuronlens.pipeline import _reference

    calls, real = [], _reference.base_forward
    monkeypatch.setattr(_reference, "base_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.fixture(scope="module")
def audits(ckpts, tiny_base_dir):
    """compare_many over the three checkpoints (base passes counted) and a separate
    compare_models of each."""
    with pytest.MonkeyPatch.context() as mp:
        passes = _count_base_passes(mp)
        base = alignment.load_model(tiny_base_dir)
        done = []
        many = alignment.compare_many(base, [str(p) for p in _fts(ckpts)], _saes(), config=CFG, cache_base_pass=False,
                                      on_report=lambda i, rep: done.append((i, rep.ft["name"])))
        n_many, loaded_after = len(passes), base.is_loaded
        single = [alignment.compare_models(tiny_base_dir, str(p), _saes(), config=CFG, cache_base_pass=False) for p in _fts(ckpts)]
    return {"many": many, "single": single, "base_passes": n_many, "single_passes": len(passes) - n_many,
            "base_loaded_after": loaded_after, "done": done}


def _close(a, b):
    return torch.allclose(a, b, rtol=1e-5, atol=1e-9)


def test_each_report_equals_its_separate_audit(audits):
    many, single = audits["many"], audits["single"]
    assert [r.ft["name"] for r in many] == ["checkpoint-100", "checkpoint-200", "checkpoint-1000"]
    assert many[1].ft["kind"] == "peft" and many[0].ft["kind"] == "folder"
    one_side = [r.name for r in ONE_SIDE_READS if r.enabled(CFG)]  # every one-side read, for every fine-tune
    assert "own" in one_side
    for m, s in zip(many, single):
        assert m.ft == s.ft and m.reads == s.reads == ["same", *one_side] and m.probe_sets == s.probe_sets
        assert all(set(ps["responses_sha256"]) == {"same", *one_side} for ps in m.probe_sets)
        fm, fs = m.sums.to_flat(), s.sums.to_flat()
        assert fm.keys() == fs.keys() and all(_close(fm[k], fs[k]) for k in fm)
        for lm, ls in zip(m.layers, s.layers):
            assert lm.layer == ls.layer and lm.drift == pytest.approx(ls.drift, rel=1e-5)
            assert lm.n_significant_latents == ls.n_significant_latents
        assert m.risk is not None and s.risk is not None and m.verdict == s.verdict
        assert m.risk.score == pytest.approx(s.risk.score, rel=1e-5, abs=1e-9)
        assert "ft_own_pass_s" in m.timings and m.timings["total_s"] >= m.timings["base_pass_s"]
    drifts = [r.max_drift_layer.drift for r in many]
    assert drifts[2] > drifts[0] > 0  # the fine-tunes differ: no report is another's copy


def test_the_base_model_runs_once_for_all_fine_tunes(audits):
    assert audits["base_passes"] == 1 and audits["single_passes"] == 3
    # the adapter on the resident base first, then the full-weight ones, each reported when done
    assert audits["done"] == [(1, "checkpoint-200"), (0, "checkpoint-100"), (2, "checkpoint-1000")]
    assert not audits["base_loaded_after"]  # lazily loaded handles are released afterwards


def test_a_broken_third_fine_tune_is_refused_before_the_base_pass(monkeypatch, ckpts, tiny_base_dir):
    from neuronlens.pipeline import _reference

    passes = _count_base_passes(monkeypatch)
    generated = []
    monkeypatch.setattr(_reference, "_base_responses", lambda *a, **k: generated.append(1) or [])
    fts = [str(p) for p in _fts(ckpts)[:2]] + [str(ckpts / "other-arch")]
    with pytest.raises(ModelLoadError, match=r"Fine-tune 3 of 3 \(.*other-arch\): Base .* different architectures"):
        alignment.compare_many(tiny_base_dir, fts, _saes(), config=CFG)
    assert passes == [] and generated == []


def test_the_api_refuses_a_string_or_an_empty_list(tiny_base_dir):
    from neuronlens.errors import ConfigError

    with pytest.raises(ConfigError, match="is not a list of fine-tuned models"):
        alignment.compare_many(tiny_base_dir, str(tiny_base_dir), _saes(), config=CFG)
    with pytest.raises(ConfigError, match="given no fine-tuned models"):
        alignment.compare_many(tiny_base_dir, [], _saes(), config=CFG)


@pytest.fixture(scope="module")
def diverged(ckpts, tok, tiny_base_dir):
    """A checkpoint whose training diverged: one NaN in its weights, seen only when they load."""
    model = alignment.load_model(tiny_base_dir).model
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "o_proj" in n)[0, 0] = float("nan")
    return tiny.save(model, tok, ckpts / "diverged" / "checkpoint-150")


def test_a_diverged_checkpoint_goes_to_on_error_and_the_others_are_audited(ckpts, diverged, tiny_base_dir, audits):
    fts = [str(_fts(ckpts)[0]), str(diverged), str(_fts(ckpts)[2])]
    with pytest.raises(ModelLoadError, match=r"Fine-tune 2 of 3 \(.*checkpoint-150\): .*NaN"):
        alignment.compare_many(tiny_base_dir, fts, _saes(), config=CFG, cache_base_pass=False)
    errors = []
    many = alignment.compare_many(tiny_base_dir, fts, _saes(), config=CFG, cache_base_pass=False, on_error=lambda i, e: errors.append((i, e)))
    assert [i for i, _ in errors] == [1] and isinstance(errors[0][1], ModelLoadError)
    assert "Fine-tune 2 of 3" in errors[0][1].problem and "NaN" in errors[0][1].problem
    assert [r.ft["name"] for r in many] == ["checkpoint-100", "checkpoint-1000"]
    for m, s in zip(many, [audits["single"][0], audits["single"][2]]):
        assert m.risk.score == pytest.approx(s.risk.score, rel=1e-5, abs=1e-9)
        assert m.max_drift_layer.drift == pytest.approx(s.max_drift_layer.drift, rel=1e-5)


# -- the command line --------------------------------------------------------------------------


def run_cli(monkeypatch, *args) -> int:
    monkeypatch.setattr(sys, "argv", ["neuronlens", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return int(exc.value.code or 0)


def test_cli_audits_every_fine_tune_into_its_own_subfolder(monkeypatch, capsys, ckpts, tiny_base_dir, audits):
    out = ckpts / "out"
    passes = _count_base_passes(monkeypatch)
    fts = [a for p in _fts(ckpts) for a in ("--ft", p)]
    code = run_cli(monkeypatch, "audit", "--base", tiny_base_dir, *fts, "--sae", ckpts / "saes", *ARGS, "--html", "--out", out)
    captured = capsys.readouterr()
    assert code == 1, captured.err  # random tiny SAEs carry no concept latents: inconclusive is not a pass
    assert passes == [1]
    names = ["checkpoint-100", "checkpoint-200", "checkpoint-1000"]
    for i, name in enumerate(names):
        assert f"== {name} ({i + 1} of 3) ==" in captured.out
        assert {p.name for p in (out / name).iterdir()} == {"report.json", "report.stats.safetensors", "report.html"}
        saved = alignment.AuditReport.load(out / name / "report.json")
        assert saved.ft["name"] == name and saved.max_drift_layer.drift == pytest.approx(audits["single"][i].max_drift_layer.drift, rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["fine_tunes"]] == names and [r["step"] for r in summary["fine_tunes"]] == [100, 200, 1000]
    assert summary["not_passed"] == names and all(r["verdict"] == "inconclusive" for r in summary["fine_tunes"])
    md = (out / "summary.md").read_text()
    assert all(f"[{n}/report.json]({n}/report.json)" in md for n in names)
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = captured.out[captured.out.index("Fine-tune  "):]
    assert [line.split()[0] for line in table.splitlines()[1:4]] == names
    assert not list(out.glob(".neuronlens*"))  # no staging or lock left


def test_cli_writes_the_others_then_exits_2_naming_the_diverged_checkpoint(monkeypatch, capsys, ckpts, diverged, tiny_base_dir, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-150").mkdir(parents=True)
    (out / "checkpoint-150" / "report.json").write_text("an earlier run's report of the checkpoint")
    c100 = ckpts / "ckpts" / "checkpoint-100"
    code = run_cli(monkeypatch, "audit", "--base", tiny_base_dir, "--ft", c100, "--ft", diverged, "--sae", ckpts / "saes", *ARGS, "--out", out)
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert code == 2 and "1 of 2 fine-tunes could not be audited (the other reports are written): checkpoint-150:" in err
    assert "NaN" in err and "How to fix" in err
    assert "NOT AUDITED  checkpoint-150" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["fine_tunes"]] == ["checkpoint-100"]
    assert [n["name"] for n in summary["not_audited"]] == ["checkpoint-150"] and "NaN" in summary["not_audited"][0]["problem"]
    assert "## Not audited (1)" in (out / "summary.md").read_text() and "audit of 2 fine-tunes" in (out / "summary.md").read_text()
    assert (out / "checkpoint-100" / "report.json").is_file()
    assert not (out / "checkpoint-150").exists()  # the earlier run's report would read as this run's
    # every one diverged: nothing to write, the first one's error alone
    twin = tmp_path / "checkpoint-160"
    shutil.copytree(diverged, twin)
    assert run_cli(monkeypatch, "audit", "--base", tiny_base_dir, "--ft", diverged, "--ft", twin, "--sae", ckpts / "saes", *ARGS,
                   "--out", tmp_path / "o2") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Fine-tune 1 of 2" in err and "NaN" in err and not (tmp_path / "o2").exists()


@pytest.fixture()
def canned(monkeypatch, audits):
    """compare_many replaced by the module's reports (verdicts set per test): the CLI's own part."""
    seen = []

    def fake(verdicts):
        def compare_many(base, fts, **kwargs):
            seen.append([h.name for h in fts])
            return [dataclasses.replace(r, risk=dataclasses.replace(r.risk, verdict=v)) for r, v in zip(audits["many"], verdicts)]
        monkeypatch.setattr(alignment, "compare_many", compare_many)
        return seen
    return fake


@pytest.mark.parametrize("verdicts,code", [(["pass", "pass", "pass"], 0), (["pass", "fail", "pass"], 1), (["pass", "pass", "inconclusive"], 1)])
def test_glob_in_natural_order_and_exit_codes(monkeypatch, capsys, ckpts, tiny_base_dir, canned, tmp_path, verdicts, code):
    seen = canned(verdicts)
    out = tmp_path / "out"
    assert run_cli(monkeypatch, "audit", "--base", tiny_base_dir, "--ft-glob", f"{ckpts}/ckpts/checkpoint-*", "--sae", ckpts / "saes",
                   *ARGS, "--out", out) == code
    assert seen == [["checkpoint-100", "checkpoint-200", "checkpoint-1000"]]
    failed = json.loads((out / "summary.json").read_text())["not_passed"]
    assert failed == [n for n, v in zip(seen[0], verdicts) if v != "pass"]


def test_a_rerun_replaces_its_subfolders_whole_and_leaves_foreign_ones_alone(monkeypatch, capsys, ckpts, tiny_base_dir, canned, tmp_path):
    canned(["pass"] * 3)
    out = tmp_path / "out"
    (out / "checkpoint-100").mkdir(parents=True)
    (out / "checkpoint-100" / "report.html").write_text("an earlier run's")
    (out / "report.json").write_text("an earlier single audit's")
    args = ("audit", "--base", tiny_base_dir, "--ft-glob", f"{ckpts}/ckpts/checkpoint-*", "--sae", ckpts / "saes", *ARGS, "--out", out)
    assert run_cli(monkeypatch, *args) == 0
    assert {p.name for p in (out / "checkpoint-100").iterdir()} == {"report.json", "report.stats.safetensors"}
    assert not (out / "report.json").exists() and "report.json" in " ".join(capsys.readouterr().err.split())
    (out / "checkpoint-200" / "my-notes.txt").write_text("mine")  # a folder the audit did not write alone
    assert run_cli(monkeypatch, *args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "holds files an audit does not write (my-notes.txt)" in err and (out / "checkpoint-200" / "my-notes.txt").is_file()


def test_a_failed_write_publishes_nothing(monkeypatch, capsys, ckpts, tiny_base_dir, canned, tmp_path):
    from neuronlens.cli import _outputs

    canned(["pass"] * 3)
    calls = []
    real = _outputs.stage_report

    def failing(report, folder, html, certs):
        calls.append(folder.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(report, folder, html, certs)

    monkeypatch.setattr(_outputs, "stage_report", failing)
    out = tmp_path / "out"
    code = run_cli(monkeypatch, "audit", "--base", tiny_base_dir, "--ft-glob", f"{ckpts}/ckpts/checkpoint-*", "--sae", ckpts / "saes",
                   *ARGS, "--out", out)
    assert code == 2 and "No space left on device" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("case,match", [
    ("twice", "is given twice"),
    ("same-name", "are both named 'checkpoint-100'"),
    ("empty-glob", "matches nothing"),
    ("glob-no-base", "--ft-glob names fine-tunes of a base model, but no --base was given"),
    ("missing-third", "(3 of 3): Model source"),
    ("other-arch-third", "Fine-tune 3 of 3"),
])
def test_bad_fine_tune_lists_exit_2_before_any_long_work(monkeypatch, capsys, ckpts, tiny_base_dir, tmp_path, case, match):
    passes = _count_base_passes(monkeypatch)
    c100 = ckpts / "ckpts" / "checkpoint-100"
    other = tmp_path / "other-run" / "checkpoint-100"  # another run's checkpoint of the same name
    shutil.copytree(c100, other)
    args = {
        "twice": ["--ft", c100, "--ft", ckpts / "ckpts" / "checkpoint-200", "--ft-glob", f"{ckpts}/ckpts/checkpoint-1*"],
        "same-name": ["--ft", c100, "--ft", ckpts / "ckpts" / "checkpoint-200", "--ft", other],
        "empty-glob": ["--ft-glob", f"{ckpts}/ckpts/step-*"],
        "glob-no-base": ["--ft-glob", f"{ckpts}/ckpts/checkpoint-*"],
        "missing-third": ["--ft", c100, "--ft", ckpts / "ckpts" / "checkpoint-200", "--ft", tmp_path / "nope"],
        "other-arch-third": ["--ft", c100, "--ft", ckpts / "ckpts" / "checkpoint-200", "--ft", ckpts / "other-arch"],
    }[case]
    base = [] if case == "glob-no-base" else ["--base", tiny_base_dir]
    code = run_cli(monkeypatch, "audit", *base, *args, "--sae", ckpts / "saes", *ARGS, "--out", tmp_path / "o")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and match in err and "How to fix" in err, err
    assert passes == [] and not (tmp_path / "o").exists()


def test_step_numbers_and_natural_order():
    from neuronlens.cli._multi import natural_key, step_numbers

    assert sorted(["checkpoint-1000", "checkpoint-200", "checkpoint-30"], key=natural_key) == ["checkpoint-30", "checkpoint-200", "checkpoint-1000"]
    assert step_numbers(["checkpoint-200", "checkpoint-100"]) == [200, 100]
    assert step_numbers(["checkpoint-100", "final"]) is None  # not every name is a step
    assert step_numbers(["run-a-100", "run-b-200"]) is None  # two runs, not one run's steps
    assert step_numbers(["ckpt-1", "ckpt-01"]) is None  # the same step twice
    assert step_numbers(["checkpoint-100"]) is None  # one point is no curve
