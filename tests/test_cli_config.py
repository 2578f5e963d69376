"""`neuronlens audit`'s AuditConfig options are generated from AuditConfig's fields: every field has
a flag, its docstring is the flag's help, its default is the CLI's, the value reaches the audit,
and a bad value is refused in CLI terms (`--fdr 1.5`, not `fdr=1.5`)."""

from __future__ import annotations

import dataclasses
import re
import sys
from types import SimpleNamespace

import pytest
import typer

from conftest import random_sae
from neuronlens import alignment, cli
from neuronlens.cli._config import cli_terms, flags, in_cli_terms
from neuronlens.config import AuditConfig, field_help
from neuronlens.errors import ConfigError, NeuronLensError
from neuronlens.risk import builtin_concept_names
from neuronlens.saes import save_saelens

FIELDS = [f.name for f in dataclasses.fields(AuditConfig)]


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Exit code, stdout and stderr (whitespace folded) of `neuronlens ARGS`."""
    monkeypatch.setattr(sys, "argv", ["neuronlens", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, " ".join(captured.err.split())


def audit_options() -> dict[str, str]:
    """Every option string of the `audit` command -> the name of the parameter it sets."""
    command = typer.main.get_command(cli.app).commands["audit"]  # type: ignore[attr-defined]
    return {opt: p.name for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def built_config(monkeypatch, capsys, *args) -> AuditConfig:
    """The AuditConfig the CLI builds from `args`, caught as it is validated (no model is loaded)."""
    seen: list[AuditConfig] = []

    def caught(self, n_layers=None):
        seen.append(dataclasses.replace(self))
        raise NeuronLensError("stopped by the test")

    monkeypatch.setattr(AuditConfig, "validate", caught)
    code, _, err = run_cli(monkeypatch, capsys, "audit", "--base", "B", "--ft", "F", *args)
    assert code == 2 and "stopped by the test" in err and len(seen) == 1, err
    return seen[0]


@pytest.mark.parametrize("name", FIELDS)
def test_every_setting_has_an_audit_flag(name):
    flag = flags()[name]
    assert audit_options().get(flag) == name
    if name != "max_prompts_per_set":  # the one flag older than the generation (README: --max-prompts)
        assert flag == "--" + name.replace("_", "-")


def test_help_shows_each_settings_docstring_and_default(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that rich wraps at spaces and truncates no word
    code, out, _ = run_cli(monkeypatch, capsys, "audit", "--help")
    text = " ".join(out.replace("│", " ").split())
    assert code == 0 and "Audit settings (AuditConfig)" in text and "Inputs and outputs" in text
    for name in FIELDS:
        first = re.split(r"(?<=\.)\s+", field_help(AuditConfig, name))[0]
        assert first in text, name
        default = getattr(AuditConfig(), name)
        if isinstance(default, (int, float, str)) and not isinstance(default, bool):
            assert f"[default: {default}]" in text.split(first, 1)[1][:1000], name


def test_cli_defaults_are_audit_config_defaults(monkeypatch, capsys):
    assert built_config(monkeypatch, capsys) == AuditConfig()


def test_flags_parse_to_the_fields(monkeypatch, capsys):
    cfg = built_config(monkeypatch, capsys, "--layers", "1", "--layers", "2,3", "--probes", "finance", "--probes", "legal,medical",
                       "--positions", "last", "--no-own-responses", "--max-prompts", "none", "--smoothing", "0.2",
                       "--min-effect", "0.1", "--min-prompts-for-pass", "5", "--top-k-saved", "7",
                       "--massive-activation-factor", "20", "--concepts", "a,b", "--labels", "x.csv")
    assert cfg == AuditConfig(layers=[1, 2, 3], probes=["finance", "legal", "medical"], positions="last", own_responses=False,
                              max_prompts_per_set=None, smoothing=0.2, min_effect=0.1, min_prompts_for_pass=5, top_k_saved=7,
                              massive_activation_factor=20.0, concepts=["a", "b"], labels=["x.csv"])


def test_settings_reach_compare_models(monkeypatch, capsys, tmp_path, tiny_base_dir):
    for layer in (1, 2):
        save_saelens(random_sae(64, 128, layer, seed=layer), tmp_path / "saes" / f"layer_{layer}")
    labels = tmp_path / "labels.csv"
    labels.write_text("layer,latent,label\n1,3,a test label\n")
    concepts = builtin_concept_names()[:2]
    seen = []
    monkeypatch.setattr(alignment, "compare_models", lambda **kw: seen.append(kw["config"]) or SimpleNamespace(verdict="pass"))
    monkeypatch.setattr("neuronlens.cli._audit.write_audit", lambda *a, **k: None)
    code, _, err = run_cli(monkeypatch, capsys, "audit", "--base", tiny_base_dir, "--ft", tiny_base_dir, "--sae", tmp_path / "saes",
                           "--layers", "1,2", "--probes", "finance", "--max-prompts", "4", "--fdr", "0.1", "--max-sae-fvu", "0.7",
                           "--concepts", ",".join(concepts), "--labels", labels, "--out", tmp_path / "out", "--no-progress")
    assert code == 0 and len(seen) == 1, err
    cfg = seen[0]
    assert (cfg.fdr, cfg.max_sae_fvu, cfg.concepts, cfg.labels) == (0.1, 0.7, concepts, [str(labels)])
    assert (cfg.layers, cfg.probes, cfg.max_prompts_per_set, cfg.threshold) == ([1, 2], ["finance"], 4, AuditConfig.threshold)


@pytest.mark.parametrize("args,shown", [
    (["--fdr", "1.5"], "Error: --fdr 1.5 must lie in (0, 1). How to fix: Use e.g. --fdr 0.05."),
    (["--max-sae-fvu", "0"], "--max-sae-fvu 0.0 must be positive. How to fix: Use e.g. --max-sae-fvu 0.5 (the default)."),
    (["--max-prompts", "1"], "--max-prompts 1 is too few prompts per set for a paired test. How to fix: "
                             "Use at least 2 prompts per set, e.g. --max-prompts 60 (the default is 24)"),
    (["--smoothing", "nan"], "--smoothing nan is not a finite number. How to fix: Set it to a number, e.g. --smoothing 0.1"),
    (["--layers", "1,1"], "--layers 1,1 repeats a layer."),
    (["--layers", "a,b"], "--layers must be integers, got ['a', 'b']. How to fix: Pass e.g. --layers 9,15,21."),
    (["--positions", "middle"], "Invalid value for '--positions'"),
])
def test_bad_settings_exit_2_in_cli_terms(monkeypatch, capsys, tmp_path, args, shown):
    code, _, err = run_cli(monkeypatch, capsys, "audit", "--base", "/nonexistent/model", "--ft", "/nonexistent/model",
                           "--out", tmp_path / "out", "--no-progress", *args)
    assert code == 2 and shown in err, err
    assert not re.search(r"\b(fdr|max_sae_fvu|max_prompts_per_set|smoothing|layers|positions)=", err), err
    assert not (tmp_path / "out").exists()


def test_the_api_keeps_python_terms():
    with pytest.raises(ConfigError) as exc:
        AuditConfig(fdr=1.5).validate()
    assert exc.value.problem == "fdr=1.5 must lie in (0, 1)." and exc.value.fix == "Use e.g. fdr=0.05."
    shown = in_cli_terms(exc.value)
    assert type(shown) is ConfigError and (shown.problem, shown.fix) == ("--fdr 1.5 must lie in (0, 1).", "Use e.g. --fdr 0.05.")


@pytest.mark.parametrize("api,cli_text", [
    ("positions='last' is wrong.", "--positions last is wrong."),
    ("own_responses=False and own_responses=True.", "--no-own-responses and --own-responses."),
    ("layers=[9, 15, 21] or probes=['finance', 'my file.jsonl'].", "--layers 9,15,21 or --probes finance,'my file.jsonl'."),
    ("max_prompts_per_set=None reads all.", "--max-prompts none reads all."),
    ("concepts=None, Set token_budget to 16.", "no --concepts, Set --token-budget to 16."),
    # prose and other names are left as they are: one-word field names change only with a value
    ("Choose layers between 0 and 29; the threshold; seed=3; cfg.fdr=1.", "Choose layers between 0 and 29; the threshold; seed=3; cfg.fdr=1."),
])
def test_cli_terms(api, cli_text):
    assert cli_terms(api) == cli_text
