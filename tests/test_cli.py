"""`neuronlens audit` exit codes (0 pass, 1 fail, 2 input error) and its output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import random_sae
from neuronlens import cli
from neuronlens.saes import save_saelens


def run_cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["neuronlens", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return int(exc.value.code or 0)


@pytest.fixture()
def sae_dir(tmp_path):
    for layer in (1, 2):
        save_saelens(random_sae(64, 128, layer, seed=layer), tmp_path / "saes" / f"layer_{layer}")
    return tmp_path / "saes"


def test_audit_tiny_pair_writes_report(monkeypatch, capsys, tmp_path, tiny_base_dir, sae_dir):
    (tmp_path / "out").mkdir()
    for stale in ("report.html", "certificate.pdf"):  # an earlier audit's, describing another run
        (tmp_path / "out" / stale).write_text("stale")
    from neuronlens.pipeline import _plan

    checks, preflight = [], _plan.preflight
    monkeypatch.setattr(_plan, "preflight", lambda *a, **k: checks.append(1) or preflight(*a, **k))
    code = run_cli(
        monkeypatch, "audit", "--base", str(tiny_base_dir), "--ft", str(tiny_base_dir), "--sae", str(sae_dir),
        "--layers", "1,2", "--probes", "finance", "--max-prompts", "4", "--max-new-tokens", "6",
        "--out", str(tmp_path / "out"), "--no-progress",
    )
    captured = capsys.readouterr()
    text = captured.out
    # a random tiny model's SAEs carry no concept latents: the audit cannot vouch for it
    assert code == 1 and "inconclusive" in text
    assert "Post-finetuning audit summary:" in text and "No drift detected" in text
    assert (tmp_path / "out" / "report.json").is_file() and len(checks) == 1  # the inputs are checked once
    assert not (tmp_path / "out" / "report.html").exists() and not (tmp_path / "out" / "certificate.pdf").exists()
    assert "Removed from an earlier audit in this folder (they described another run): report.html, certificate.pdf" in " ".join(
        captured.err.split())


@pytest.mark.parametrize(
    "args,match",
    [
        (["--base", "/nonexistent/model", "--ft", "/nonexistent/model"], "does not exist"),
        (["--base", "x"], "Give both --base and --ft"),
        (["--ft-base", "B"], "--ft-base names the base of the --ft adapter, but no --ft was given"),
        (["--layers", "a,b", "--base", "B", "--ft", "B"], "must be integers"),
        (["--probes", "nope", "--base", "B", "--ft", "B"], "neither a built-in set"),
        (["--layers", "99", "--base", "B", "--ft", "B"], "out of range"),
        (["--max-memory", "20GiB", "--device-map", "auto", "--base", "B", "--ft", "B"], "is not DEVICE=SIZE"),
        (["--max-memory", "cpu=2GiB", "--base", "B", "--ft", "B"], "max_memory was given without device_map"),
        # settings are checked before any model is loaded: the missing model is not reached
        (["--threshold", "1.5", "--base", "/nonexistent/model", "--ft", "/nonexistent/model"], "--threshold 1.5 must lie in (0, 1)"),
        (["--specificity", "0", "--base", "B", "--ft", "B"], "--specificity 0.0 must lie in (0, 1]"),
        # devices are checked when the models are resolved, not when the weights move after generation
        (["--device", "tpu", "--base", "B", "--ft", "B"], "device='tpu' is not a device name PyTorch knows"),
        (["--device", "cuda:abc", "--base", "B", "--ft", "B"], "device='cuda:abc' is not a device name"),
        (["--device-map", "bogus", "--base", "B", "--ft", "B"], "device_map='bogus' is neither a placement strategy nor a device"),
        (["--signing-key", "/nonexistent.key", "--base", "/nonexistent/model", "--ft", "/nonexistent/model"],
         "no certificate was asked for"),
    ],
)
def test_input_errors_exit_2(monkeypatch, capsys, tmp_path, tiny_base_dir, sae_dir, args, match):
    args = [str(tiny_base_dir) if a == "B" else a for a in args]
    code = run_cli(monkeypatch, "audit", *args, "--sae", str(sae_dir), "--out", str(tmp_path / "o"), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in " ".join(err.split()) and "How to fix" in err
    assert not (tmp_path / "o" / "report.json").exists()


def test_device_map_and_max_memory_reach_transformers(monkeypatch, capsys, tmp_path, tiny_base_dir, sae_dir):
    from neuronlens.models import _handle

    seen = []
    real = _handle._load_weights
    monkeypatch.setattr(_handle, "_load_weights", lambda h: seen.append((h.device_map, h.max_memory)) or real(h))
    code = run_cli(
        monkeypatch, "audit", "--base", str(tiny_base_dir), "--ft", str(tiny_base_dir), "--sae", str(sae_dir),
        "--layers", "1,2", "--probes", "finance", "--max-prompts", "4", "--max-new-tokens", "6",
        "--device-map", "auto", "--max-memory", "cpu=2GiB", "--out", str(tmp_path / "out"), "--no-progress",
    )
    assert code == 1 and "No drift detected" in capsys.readouterr().out
    assert seen and all(s == ("auto", {"cpu": "2GiB"}) for s in seen)


def test_unwritable_output_folder_exits_2_before_work(monkeypatch, capsys, tmp_path, tiny_base_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = run_cli(monkeypatch, "audit", "--base", str(tiny_base_dir), "--ft", str(tiny_base_dir), "--out", str(blocker / "sub"), "--no-progress")
    assert code == 2 and "cannot be written" in capsys.readouterr().err


def test_usage_error_exit_2_from_a_real_process():
    r = subprocess.run([sys.executable, "-m", "neuronlens", "audit", "--no-such-flag"], capture_output=True, text=True, env=os.environ)
    assert r.returncode == 2 and "No such option" in r.stderr


def test_probes_command(monkeypatch, capsys):
    assert run_cli(monkeypatch, "probes") == 0
    assert "emergent_misalignment" in capsys.readouterr().out


def test_organisms_build_refuses_an_unknown_recipe_before_loading_anything(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("NEURONLENS_CACHE", str(tmp_path))
    from neuronlens.organisms import RECIPES

    for args in (("build", "cooking", "--no-progress"), ("list",)):
        code = run_cli(monkeypatch, "organisms", *args, "--recipe", "bogus")
        err = capsys.readouterr().err
        assert code == 2 and "No fine-tuning recipe named 'bogus'" in err and f"Choose from {', '.join(RECIPES)}" in err
        assert not any(tmp_path.iterdir())  # refused before the base model was loaded or anything cached
    code = run_cli(monkeypatch, "organisms", "build", "cooking", "--seed", "-1", "--no-progress")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Training seed -1 is not a non-negative integer" in err and not any(tmp_path.iterdir())


def test_an_output_name_taken_by_a_folder_stops_the_audit_before_work(monkeypatch, capsys, tmp_path):
    """A certificate.pdf that is a folder failed only after the audit, with a traceback, the
    verdict unprinted and a new certificate.json beside the old run's files."""
    out = tmp_path / "o"
    (out / "certificate.pdf").mkdir(parents=True)
    (out / "report.json").write_text("the earlier run")
    code = run_cli(monkeypatch, "audit", "--base", "/nonexistent/model", "--ft", "/nonexistent/model", "--certificate", "json,pdf",
                   "--out", str(out), "--no-progress")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "certificate.pdf exists and is not a file" in err and "How to fix" in err
    assert (out / "report.json").read_text() == "the earlier run" and not (out / "certificate.json").exists()


def test_organisms_list_refuses_a_negative_seed_before_loading_anything(monkeypatch, capsys, tmp_path):
    """random.Random(-1) mixes the same examples as seed 1: a negative seed is no replicate zoo."""
    monkeypatch.setenv("NEURONLENS_CACHE", str(tmp_path))
    code = run_cli(monkeypatch, "organisms", "list", "--seed", "-1")
    err = " ".join(capsys.readouterr().err.split())
    # click words the range error by version ("... greater than or equal to 0." here; 8.5 on the
    # GPU image: "-1 is not in the range x>=0.")
    assert code == 2 and "--seed" in err and ("greater than or equal to 0" in err or "x>=0" in err)
    assert not any(tmp_path.iterdir())
