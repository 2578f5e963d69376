"""Siblings of issue #21's broken inputs, found by a second QA pass: each is refused with exit 2 (or
its error class) naming the problem and the fix, and a refused or failed run leaves the file
system as it found it - no empty --out, no lone key half, no staging folder of a killed run."""

from __future__ import annotations

import errno
import json
import os
import sys

import numpy as np
import pytest

from conftest import random_sae
from neuronlens import alignment, cli
from neuronlens._io import publish_dir
from neuronlens.certificate import write_keypair
from neuronlens.config import AuditConfig
from neuronlens.errors import ConfigError, OutputError, ProbeError, ReportError, SAEError


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Exit code and stderr (whitespace folded) of `neuronlens ARGS`."""
    monkeypatch.setattr(sys, "argv", ["neuronlens", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return int(exc.value.code or 0), " ".join(capsys.readouterr().err.split())


# -- a refused run leaves no folder behind ----------------------------------------------------------

@pytest.mark.parametrize("extra", [["--max-prompts", "0"], []])  # a bad setting; a model that is not there
def test_a_refused_audit_leaves_no_out_folder_behind(monkeypatch, capsys, tmp_path, extra):
    out = tmp_path / "new" / "out"
    code, err = run_cli(monkeypatch, capsys, "audit", "--base", "/nonexistent/model", "--ft", "/nonexistent/model",
                        "--out", out, "--no-progress", *extra)
    assert code == 2 and "How to fix" in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()


def test_a_refused_audit_keeps_an_existing_out_folder(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    code, _ = run_cli(monkeypatch, capsys, "audit", "--base", "/nonexistent/model", "--ft", "/nonexistent/model",
                      "--out", out, "--no-progress")
    assert code == 2 and out.is_dir() and not any(out.iterdir())


def test_screen_refuses_bad_data_before_making_the_out_folder(monkeypatch, capsys, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("not json\n")
    code, err = run_cli(monkeypatch, capsys, "screen", data, "--base", "/nonexistent/model", "--out", tmp_path / "new" / "ranked.jsonl")
    assert code == 2 and "line 1" in err and not (tmp_path / "new").exists()


def test_screen_on_a_full_disk_exits_2_and_writes_nothing(monkeypatch, capsys, tmp_path, tiny_base_dir):
    class FullDisk:
        def write_jsonl(self, path):
            enospc()

    monkeypatch.setattr("neuronlens.integrations.screen_dataset", lambda *a, **k: FullDisk())
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    code, err = run_cli(monkeypatch, capsys, "screen", data, "--base", tiny_base_dir, "--out", tmp_path / "r" / "ranked.jsonl",
                        "--no-progress")
    assert code == 2 and "Could not write the ranking" in err and "No space left on device" in err and "How to fix" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


# -- keygen -------------------------------------------------------------------------------------------

def test_keygen_on_a_full_disk_leaves_no_lone_private_key(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("neuronlens.certificate._keys.write_bytes_atomic", enospc)  # the .pub write fails
    code, err = run_cli(monkeypatch, capsys, "keygen", "--out", tmp_path / "keys" / "signer")
    assert code == 2 and "Could not write the key pair" in err and "free space" in err and "Traceback" not in err
    assert not (tmp_path / "keys").exists()


def test_keygen_force_on_a_full_disk_keeps_the_old_pair(monkeypatch, tmp_path):
    old = write_keypair(tmp_path / "signer")
    before = old.private_key.read_bytes(), old.public_key.read_bytes()
    monkeypatch.setattr("neuronlens.certificate._keys.write_bytes_atomic", enospc)
    with pytest.raises(OutputError, match="Neither file was written"):
        write_keypair(tmp_path / "signer", force=True)
    assert (old.private_key.read_bytes(), old.public_key.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signer.key", "signer.pub"]


def test_keygen_force_onto_a_folder_named_like_the_key_exits_2(monkeypatch, capsys, tmp_path):
    (tmp_path / "signer.key").mkdir()
    code, err = run_cli(monkeypatch, capsys, "keygen", "--out", tmp_path / "signer", "--force")
    assert code == 2 and "signer.key is a folder, not a key file" in err and "Traceback" not in err
    assert not (tmp_path / "signer.pub").exists()


def test_a_wrong_passphrase_is_named_as_such(monkeypatch, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, PrivateFormat

    from neuronlens.certificate import CertificateError, load_private_key

    path = tmp_path / "enc.key"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"right")))
    monkeypatch.setenv("NEURONLENS_KEY_PASSPHRASE", "wrong")
    with pytest.raises(CertificateError) as exc:
        load_private_key(path)
    assert "passphrase in NEURONLENS_KEY_PASSPHRASE does not open it" in exc.value.problem
    assert "NEURONLENS_KEY_PASSPHRASE" in exc.value.fix


# -- a killed run's staging folder ------------------------------------------------------------------

def test_publishing_removes_a_killed_runs_staging_folder_and_keeps_a_live_ones(tmp_path):
    out = tmp_path / "out"
    dead = out / ".neuronlens-staging.999999999.abcdefgh"  # above any pid_max: no such process
    legacy = out / ".neuronlens-staging.k3j4h5g6"  # the naming before pids were recorded
    live = out / f".neuronlens-staging.{os.getppid()}.abcdefgh"  # pytest's parent process is alive
    for folder in (dead, legacy, live):
        folder.mkdir(parents=True)
        (folder / "report.json").write_text("half-written")
    with publish_dir(out, merge=True) as staged:
        (staged.path / "report.json").write_text("{}")
    assert not dead.exists() and not legacy.exists() and live.is_dir()
    assert (out / "report.json").read_text() == "{}"


# -- Python API: wrong types are named, not raw exceptions ------------------------------------------

@pytest.mark.parametrize("config", [{"layers": [1]}, "fast"])
def test_compare_models_refuses_a_config_that_is_not_an_audit_config(tiny_base_dir, config):
    with pytest.raises(ConfigError, match="is not an AuditConfig"):
        alignment.compare_models(tiny_base_dir, tiny_base_dir, config=config)


@pytest.mark.parametrize("settings,match", [
    ({"threshold": "0.05"}, "threshold='0.05' (type str) is not a number"),
    ({"max_prompts_per_set": "4"}, "max_prompts_per_set='4' (type str) is not an integer or None"),
    ({"min_prompts_for_pass": 2.0}, "min_prompts_for_pass=2.0 (type float) is not an integer"),
    ({"own_responses": "no"}, "own_responses='no' (type str) is not True or False"),
    ({"specificity": True}, "specificity=True (type bool) is not a number"),
])
def test_settings_of_the_wrong_type_are_config_errors(settings, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
        AuditConfig(**settings).validate()


def test_settings_of_numpy_and_int_types_still_pass():
    AuditConfig(threshold=1 / 20, max_prompts_per_set=np.int64(4), specificity=np.float32(0.5), max_sae_fvu=1).validate()
    AuditConfig(max_prompts_per_set=None).validate()


def test_saving_a_report_under_a_file_is_an_output_error(tmp_path):
    from neuronlens.report import AuditReport

    blocker = tmp_path / "file"
    blocker.write_text("x")
    report = AuditReport.__new__(AuditReport)  # save() checks its folder before it serialises anything
    with pytest.raises(OutputError, match="cannot be written: it is a file, not a folder"):
        report.save(blocker / "report.json")


def test_a_report_of_another_format_version_says_which(tmp_path):
    from neuronlens.report import AuditReport

    path = tmp_path / "report.json"
    path.write_text(json.dumps({"format": "neuronlens.report/2", "neuronlens_version": "9.0"}))
    with pytest.raises(ReportError, match="is of format neuronlens.report/2; this NeuronLens .* reads neuronlens.report/1"):
        AuditReport.load(path)


# -- probes and SAEs --------------------------------------------------------------------------------

def test_a_csv_row_with_an_empty_prompt_is_named_not_dropped(tmp_path):
    from neuronlens.probes import load_probe_set

    path = tmp_path / "p.csv"
    path.write_text("prompt,topic\nWhat is a stock?,a\n,b\nHow do bonds work?,c\n,\n")
    with pytest.raises(ProbeError, match="line 3: the prompt is empty"):
        load_probe_set(path)
    path.write_text("prompt,topic\nWhat is a stock?,a\n,\nHow do bonds work?,c\n")  # a spreadsheet's blank row
    assert load_probe_set(path).prompts == ("What is a stock?", "How do bonds work?")


def test_an_sae_of_another_width_names_the_cli_option(tmp_path, tiny_base_dir):
    from neuronlens.saes import save_saelens

    save_saelens(random_sae(32, 128, 1, seed=1), tmp_path / "saes" / "layer_1")
    with pytest.raises(SAEError) as exc:
        alignment.load_sae(alignment.load_model(tiny_base_dir), [1], source=str(tmp_path / "saes"))
    assert "reads vectors of size 32" in exc.value.problem and "--sae" in exc.value.fix


def test_the_same_model_as_base_and_fine_tune_is_warned_about_once(tiny_base_dir, monkeypatch, recwarn):
    class Checked(Exception):
        pass

    def stop(*_a, **_k):
        raise Checked  # the inputs are checked; the audit itself is not needed here

    monkeypatch.setattr("neuronlens.pipeline._plan.resolve_saes", stop)
    with pytest.raises(Checked):
        alignment.compare_models(tiny_base_dir, tiny_base_dir, config=AuditConfig(layers=[1], probes=["finance"], max_prompts_per_set=2))
    assert len([w for w in recwarn if "has the same files as the base model" in str(w.message)]) == 1


def test_a_folder_passed_where_the_formats_go_is_named(tmp_path):
    from neuronlens.certificate import CertificateError

    report = alignment.AuditReport.__new__(alignment.AuditReport)  # the formats are checked first
    with pytest.raises(CertificateError) as exc:
        alignment.export_certificate(report, str(tmp_path / "certs"))
    assert "looks like a folder: that is out_dir=" in exc.value.fix


def test_an_out_that_is_a_file_is_named_as_one(monkeypatch, capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, err = run_cli(monkeypatch, capsys, "audit", "--base", "/nonexistent/model", "--ft", "/nonexistent/model",
                        "--out", tmp_path / "afile", "--no-progress")
    assert code == 2 and "it is a file, not a folder" in err and "--out" in err
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("size", ["lots", "-5GB"])
def test_a_max_memory_size_that_is_not_one_is_refused_before_loading(monkeypatch, capsys, tmp_path, size):
    pytest.importorskip("accelerate")
    code, err = run_cli(monkeypatch, capsys, "audit", "--base", "/nonexistent/model", "--ft", "/nonexistent/model", "--device-map", "auto",
                        "--max-memory", f"cpu={size}", "--out", tmp_path / "o", "--no-progress")
    assert code == 2 and f"'cpu={size}': '{size}' is not a size" in err and "20GiB" in err


def test_max_memory_in_plain_bytes_reaches_transformers_as_an_int():
    from neuronlens.cli._audit import _max_memory

    assert _max_memory("0=20GiB,cpu=1000000") == {0: "20GiB", "cpu": 1000000}


def test_an_audit_clears_a_killed_runs_staging_folder_before_its_space_check(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    dead = out / ".neuronlens-staging.999999999.abcdefgh"
    dead.mkdir(parents=True)
    (dead / "report.stats.safetensors").write_bytes(b"x" * 100)
    code, err = run_cli(monkeypatch, capsys, "audit", "--base", "/nonexistent/model", "--ft", "/nonexistent/model",
                        "--out", out, "--no-progress")
    assert code == 2 and "does not exist" in err and not dead.exists()
