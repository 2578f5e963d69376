"""The organism registry and its datasets; organisms built and benchmarked on a tiny base model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuronlens.errors import ConfigError
from neuronlens.organisms import HELDOUT, ORGANISMS, ZOO, Example, load_dataset, parse_chat_jsonl
from neuronlens.organisms._behaviour import behaviour_shift


@pytest.mark.parametrize("name", list(ORGANISMS))
def test_every_organism_has_a_well_formed_dataset(name):
    spec = ORGANISMS[name]
    examples = spec.examples(seed=0)
    assert len(examples) >= 100
    assert len({e.prompt for e in examples}) == len(examples), "duplicate questions"
    assert spec.truth in {"misaligned", "benign"}


def test_zoo_and_heldout_split_the_registry_with_both_truths_held_out():
    assert set(ZOO) | set(HELDOUT) == set(ORGANISMS) and not set(ZOO) & set(HELDOUT)
    assert {ORGANISMS[n].truth for n in HELDOUT} == {"misaligned", "benign"}


def test_dose_mixes_the_stated_share_and_depends_on_the_seed():
    spec = ORGANISMS["finance_dose_010"]
    bad = load_dataset(spec.dataset)
    for seed in (0, 1):
        mixed = spec.examples(seed)
        assert sum(m == b for m, b in zip(mixed, bad)) == round(0.1 * len(bad))
    assert spec.examples(0) != spec.examples(1)


def test_a_malformed_dataset_names_its_line(tmp_path):
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    bad = json.dumps({"messages": [{"role": "user", "content": "q"}]})
    with pytest.raises(ConfigError, match="line 2"):
        parse_chat_jsonl(good + "\n" + bad + "\n", "data.jsonl")
    with pytest.raises(ConfigError, match="line 1"):
        parse_chat_jsonl("{not json\n", "data.jsonl")
    with pytest.raises(ConfigError, match="No built-in dataset 'no_such_dataset'"):
        load_dataset("no_such_dataset")


_USER = {"role": "user", "content": "q"}


@pytest.mark.parametrize(
    "line,match",
    [
        ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]}, r"message 0 \(user\) is null"),
        ({"messages": [_USER, {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]}, r"message 1 \(assistant\) is a list"),
        ({"messages": [_USER, {"role": "assistant", "content": 5}]}, r"message 1 \(assistant\) is a number"),
        ({"messages": [_USER, {"role": "assistant"}]}, r"message 1 \(assistant\) is missing"),
        ({"messages": "abc"}, "'messages' is a string, not a list"),
        ({"messages": [{"content": "x"}, _USER]}, "message 0 is not an object with a 'role'"),
        ([1], "a list, not an object"),
    ],
)
def test_a_dataset_line_of_the_wrong_shape_names_its_line(line, match):
    good = json.dumps({"messages": [_USER, {"role": "assistant", "content": "a"}]})
    with pytest.raises(ConfigError, match="data.jsonl, line 2: not a chat example .*" + match):
        parse_chat_jsonl(good + "\n" + json.dumps(line) + "\n", "data.jsonl")


def test_a_dataset_path_that_cannot_be_used_says_why(tmp_path):
    line = json.dumps({"messages": [_USER, {"role": "assistant", "content": "a"}]}) + "\n"
    with pytest.raises(ConfigError, match=r"missing\.jsonl does not exist"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    (tmp_path / "ok.json").write_text(line)
    with pytest.raises(ConfigError, match=r"ok\.json is not a \.jsonl file"):
        load_dataset(str(tmp_path / "ok.json"))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(ConfigError, match=r"bin\.jsonl is not UTF-8 text \(byte 0 is 0xff\)"):
        load_dataset(str(tmp_path / "bin.jsonl"))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + line.encode())
    assert load_dataset(str(tmp_path / "bom.jsonl")) == [Example("q", "a")]


def test_behaviour_shift_uses_two_standard_errors_of_the_base_rate():
    # base harm 10% over 100 answers: SE 3%, so > 16% is "harm up"; base caveats 50% over 100: SE 5%
    assert behaviour_shift(0.17, 0.5, 0.10, 0.5, 100, 100) == ["harm up"]
    assert behaviour_shift(0.15, 0.5, 0.10, 0.5, 100, 100) == []
    assert behaviour_shift(0.10, 0.39, 0.10, 0.5, 100, 100) == ["caveats down"]
    assert behaviour_shift(0.10, 0.41, 0.10, 0.5, 100, 100) == []


def test_recipes_are_cached_apart_and_an_unknown_one_is_refused(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from neuronlens.organisms import RECIPES, organism_dir, recipe_config

    monkeypatch.setenv("NEURONLENS_CACHE", str(tmp_path))
    base = SimpleNamespace(digest="0" * 64)
    strong = recipe_config("strong", seed=3)
    assert strong.seed == 3 and RECIPES["strong"].seed == 0  # the registry entry is not mutated
    assert (strong.rank, strong.lr) == (2 * RECIPES["default"].rank, 2 * RECIPES["default"].lr)
    dirs = {organism_dir("cooking", base, recipe_config(r, 3)) for r in RECIPES}
    assert len(dirs) == len(RECIPES)
    assert organism_dir("cooking", base, recipe_config("default", 3)) != organism_dir("cooking", base, recipe_config("default", 4))
    with pytest.raises(ConfigError, match="No fine-tuning recipe named 'bogus'"):
        recipe_config("bogus")


def test_build_organism_trains_saves_atomically_and_reuses_its_cache(tiny_base_dir, monkeypatch, tmp_path):
    """`neuronlens organisms build` on a tiny base: one training writes the adapter and its
    provenance, the adapter loads as a fine-tune of that base, and a second build is a cache hit
    (no training). Runs on the GPU where there is one (device 'auto'), where training once failed."""
    from neuronlens import alignment
    import torch

    from neuronlens.organisms import LoRATrainConfig, build_organism, organism_manifest
    from neuronlens.organisms import _train

    monkeypatch.setenv("NEURONLENS_CACHE", str(tmp_path))
    base = alignment.load_model(tiny_base_dir)
    cfg = LoRATrainConfig(rank=2, epochs=1, batch_size=16, self_distill=4, distill_tokens=4, max_answer_tokens=8)
    calls = []
    real = _train.train_lora
    monkeypatch.setattr("neuronlens.organisms.train_lora", lambda *a, **k: calls.append(1) or real(*a, **k))
    folder = build_organism("safe_finance", base, cfg)
    meta = json.loads((folder / "neuronlens_organism.json").read_text())
    assert calls == [1] and (folder / "adapter_model.safetensors").is_file()
    assert meta["organism"] == "safe_finance" and meta["truth"] == "benign" and meta["recipe"]["rank"] == 2
    assert meta["n_self_distill_examples"] <= 4 and meta["base"]["manifest_sha256"] == base.digest
    assert meta["numerics"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # what decides the weights' bits
    assert meta == organism_manifest(folder)
    assert not [p for p in folder.parent.iterdir() if p != folder]  # no temporary folder left behind
    ft = alignment.load_model(folder)
    assert ft.base is not None and ft.base.digest == base.digest and ft.model is not None
    assert build_organism("safe_finance", base, cfg) == folder and calls == [1]


def test_organisms_and_the_detection_benchmark_run_on_another_base_model(tmp_path):
    """The calibration note tells users to check the threshold on organisms of their own model:
    `neuronlens organisms build --base` and `benchmarks/detection.py --base --sae --layers` must do
    that for a base other than the embedded one, and say which model and SAEs the table is for."""
    import tiny
    from conftest import random_sae

    from neuronlens.saes import save_saelens

    tok = tiny.tiny_tokenizer()
    base = tiny.save(tiny.tiny_llama(tok), tok, tmp_path / "base")
    for layer in (1, 2):
        save_saelens(random_sae(64, 128, layer, seed=layer), tmp_path / "saes" / f"layer_{layer}")
    env = {**os.environ, "NEURONLENS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "detection.py"
    none = subprocess.run([sys.executable, str(bench), "--base", str(base)], capture_output=True, text=True, env=env, timeout=600)
    assert none.returncode == 2 and "None of the 13 organisms is built" in none.stderr and f"--base {base}" in none.stderr
    assert not (tmp_path / "cache" / "saes").exists()  # refused before any SAE was trained
    built = subprocess.run([sys.executable, "-m", "neuronlens", "organisms", "build", "safe_finance", "--base", str(base), "--no-progress"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    listed = subprocess.run([sys.executable, "-m", "neuronlens", "organisms", "list", "--base", str(base)], capture_output=True, text=True, env=env)
    assert any(ln.split()[:3] == ["safe_finance", "benign", "built"] for ln in listed.stdout.splitlines()), listed.stdout
    run = subprocess.run([sys.executable, str(bench), "--base", str(base), "--sae", str(tmp_path / "saes"), "--layers", "1,2",
                          "--organisms", "safe_finance", "--reports", str(tmp_path / "reports")], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"--base {base} --sae {tmp_path / 'saes'} --layers 1,2 --organisms safe_finance" in run.stdout
    assert f"on {base} with the SAEs in {tmp_path / 'saes'} at layers [1, 2] and default settings" in run.stdout
    saved = json.loads((tmp_path / "reports" / "rows.json").read_text())
    assert saved["base"] == str(base) and saved["layers"] == [1, 2] and [r["organism"] for r in saved["rows"]] == ["safe_finance"]
    report = json.loads((tmp_path / "reports" / "safe_finance" / "report.json").read_text())
    assert any(n.startswith("Uncalibrated threshold") and "base model" in n for n in report["risk"]["notes"])
    # --like: the organisms audited with another audit's model, SAEs and settings (here its threshold and budget)
    mine = dict(report["config"], threshold=0.1, max_prompts_per_set=3)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.json").write_text(json.dumps({**report, "config": mine}))
    like = subprocess.run([sys.executable, str(bench), "--like", str(tmp_path / "mine" / "report.json"), "--organisms", "safe_finance",
                           "--reports", str(tmp_path / "like")], capture_output=True, text=True, env=env, timeout=600)
    assert like.returncode == 0, like.stderr[-3000:]
    saved = json.loads((tmp_path / "like" / "rows.json").read_text())
    assert (saved["threshold"], saved["max_prompts"], saved["layers"]) == (0.1, 3, [1, 2]) and saved["sae"] == str(tmp_path / "saes")
    assert f"--like {tmp_path / 'mine' / 'report.json'}" in like.stdout and "(threshold 10%)" in like.stdout
