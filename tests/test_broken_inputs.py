"""Inputs an outside QA pass broke (issue #21), each refused with a clear error before long work:
prompts longer than the model's context (and a 10 MB one), probe sets given as one string, and
NaN/Inf activations or statistics, which must stop an audit rather than print "no drift (+nan)".
"""

from __future__ import annotations

import dataclasses

import json
import math

import pytest

import tiny
from conftest import random_sae
from neuronlens import alignment, cli
from neuronlens.config import AuditConfig
from neuronlens.errors import ConfigError, NonFiniteError, ProbeError
from neuronlens.models import decoder_layers
from neuronlens.probes import CHARS_PER_TOKEN, ProbeSet, checked_prompt_ids, context_length, load_probe_set, response_sequences
from neuronlens.saes import SAESet

CFG = AuditConfig(max_prompts_per_set=4, max_new_tokens=6, own_responses=False)
DRIFT = ["drift"]
CONTEXT = 512
"""tests/tiny.py's models: max_position_embeddings (Llama) and n_positions (GPT-2)."""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saes():
    return SAESet({1: random_sae(64, 128, 1, seed=1), 3: random_sae(64, 128, 3, seed=3)})


def _no_generation(monkeypatch):
    def fail(*_a, **_k):
        raise AssertionError("generated although a prompt cannot fit")

    monkeypatch.setattr("neuronlens.probes._responses.generate_greedy", fail)


class _CountingTokenizer:
    """Delegates to a tokenizer and records the length of every text it is asked to tokenise."""

    def __init__(self, tok):
        self._tok = tok
        self.lengths: list[int] = []

    def __call__(self, text, **kw):
        self.lengths.append(len(text))
        return self._tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


# -- 1. prompts against the context length ------------------------------------------------------


def test_a_prompt_longer_than_the_context_is_refused_by_number_before_generation(tiny_base_dir, saes, tmp_path, monkeypatch):
    path = tmp_path / "long.txt"
    path.write_text("What is a bond?\n\n" + "word " * 700 + "\nWhat is APR?\n")  # the long prompt is on line 3
    _no_generation(monkeypatch)
    with pytest.raises(ProbeError) as exc:
        alignment.compare_models(alignment.load_model(tiny_base_dir), alignment.load_model(tiny_base_dir), saes,
                                 probes=[str(path)], metrics=DRIFT, config=CFG)
    problem = exc.value.problem
    assert "Probe set 'long'" in problem and str(path) in problem and "prompt 2, line 3:" in problem
    n = int(problem.split("prompt 2, line 3: ")[1].split(" tokens")[0].replace(",", ""))
    assert n > CONTEXT and f"context of {CONTEXT} tokens" in problem and "max_position_embeddings" in problem
    assert "6 response tokens" in problem
    assert exc.value.fix.startswith(f"Shorten that prompt to at most {CONTEXT - 6} tokens") and "drop it" in exc.value.fix


def test_a_subset_of_a_file_keeps_each_prompts_line_number(tmp_path):
    path = tmp_path / "five.txt"
    path.write_text("one?\n\ntwo?\nthree?\n\n\nfour?\nfive?\n")
    assert load_probe_set(path).lines == (1, 3, 4, 7, 8)
    sub = load_probe_set(path, 2)
    assert sub.prompts == ("one?", "three?") and sub.lines == (1, 4)
    assert sub.identity() == ProbeSet(sub.name, sub.prompts, sub.source).identity()  # not part of the set's identity


def test_a_prompt_that_fits_only_without_the_response_budget_asks_for_a_lower_budget(tok):
    ps = ProbeSet("p", ("What is a bond?", "word " * 120), "test")
    n = len(checked_prompt_ids(tok, ps, [1], 0, (CONTEXT, "test"))[0])
    assert n < CONTEXT
    with pytest.raises(ProbeError, match=rf"prompt 2: {n} tokens") as exc:  # a set built in code has no line numbers
        checked_prompt_ids(tok, ps, [0, 1], CONTEXT - n + 1, (CONTEXT, "test"))
    assert exc.value.fix.startswith(f"Lower the response budget to at most {CONTEXT - n} tokens (--max-new-tokens")
    checked_prompt_ids(tok, ps, [0, 1], CONTEXT - n, (CONTEXT, "test"))  # exactly fills the context: accepted


def test_a_10_mb_prompt_is_refused_without_tokenising_it(tok, tmp_path):
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps({"prompt": "Is rent deductible?"}) + "\n" + json.dumps({"prompt": "lorem ipsum " * 900_000}) + "\n")
    ps = load_probe_set(path)
    counting = _CountingTokenizer(tok)
    with pytest.raises(ProbeError) as exc:
        checked_prompt_ids(counting, ps, range(2), 48, (CONTEXT, "test"))
    assert "prompt 2, line 2: 10,799,999 characters" in exc.value.problem
    # the chat template adds a few dozen characters around the prefix that is tokenised
    assert max(counting.lengths) < CHARS_PER_TOKEN * CONTEXT + 100


def test_context_length_reads_config_then_a_meaningful_tokenizer_limit(tok):
    llama = tiny.tiny_llama(tok).config
    gpt2 = tiny.tiny_gpt2(tok).config
    assert context_length(llama, tok) == (CONTEXT, "the model config's max_position_embeddings")
    assert context_length(gpt2, tok)[0] == gpt2.n_positions == CONTEXT  # transformers maps max_position_embeddings to it

    class Bare:
        pass

    class Tok:
        model_max_length = 2048

    assert tok.model_max_length > 10**20  # transformers' "no limit" sentinel is not a context
    assert context_length(Bare(), tok) is None
    assert context_length(Bare(), Tok()) == (2048, "the tokenizer's model_max_length")


def test_gpt2_prompt_past_its_position_embeddings_is_a_probe_error_not_an_index_error(tok, tmp_path, monkeypatch):
    """GPT-2's learned position embeddings end at n_positions: a longer sequence used to raise an
    IndexError deep in the forward pass (exit 1)."""
    handle = alignment.load_model(tiny.save(tiny.tiny_gpt2(tok), tok, tmp_path / "gpt2"))
    _no_generation(monkeypatch)
    ps = ProbeSet("p", ("What is a bond?", "word " * 600), "test")
    with pytest.raises(ProbeError, match=rf"context of {CONTEXT} tokens.*prompt 2: [\d,]+ tokens"):
        response_sequences(handle, [ps], 8, use_cache=False)
    assert not handle.is_loaded  # refused before the weights were needed


# -- 2. probe sets given as one string --------------------------------------------------------------


def test_probes_given_as_one_string_are_one_set(tiny_base_dir, saes):
    base = alignment.load_model(tiny_base_dir)
    rep = alignment.compare_models(base, alignment.load_model(tiny_base_dir), saes, probes="finance", metrics="drift", config=CFG)
    assert [ps["name"] for ps in rep.probe_sets] == ["finance"] and rep.config.probes == ["finance"]
    cfg = AuditConfig(probes="legal")
    cfg.validate()
    assert cfg.probes == ["legal"]


@pytest.mark.parametrize("probes", [5, {"finance": 1}, ["finance", 3], b"finance"])
def test_probes_of_another_type_are_refused_naming_what_is_accepted(probes, tiny_base_dir, saes):
    with pytest.raises(ConfigError) as exc:
        alignment.compare_models(tiny_base_dir, tiny_base_dir, saes, probes=probes, metrics=DRIFT, config=CFG)
    assert "probe-set name" in exc.value.problem and "probes=['finance'" in exc.value.fix
    with pytest.raises(ConfigError, match="probe-set name"):
        AuditConfig(probes=probes).validate()


def test_probe_paths_are_accepted_and_stored_as_strings(tmp_path):
    path = tmp_path / "mine.txt"
    cfg = AuditConfig(probes=[path, "finance"])
    cfg.validate()
    assert cfg.probes == [str(path), "finance"]
    json.dumps(cfg.to_dict())  # the report stores the config as JSON


@pytest.mark.parametrize("name", ["smoothing", "massive_activation_factor", "min_effect"])
def test_non_finite_settings_are_refused(name):
    for value in (math.nan, math.inf):
        with pytest.raises(ConfigError, match=f"{name}={value!r} is not a finite number"):
            AuditConfig(**{name: value}).validate()


# -- 3. non-finite activations and statistics -----------------------------------------------------------


def _nan_at(model, layer: int):
    """A forward hook that makes decoder block `layer` output NaN at every position from 3 on."""

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[:, 3:] = math.nan
        return output

    return decoder_layers(model)[layer].register_forward_hook(hook)


@pytest.mark.parametrize("side", ["base", "ft"])
def test_nan_activations_stop_the_audit_naming_model_layer_and_probe_set(side, tiny_base_dir, saes):
    base, ft = alignment.load_model(tiny_base_dir), alignment.load_model(tiny_base_dir)
    hook = _nan_at((base if side == "base" else ft).model, 1)
    try:
        with pytest.raises(NonFiniteError) as exc:
            alignment.compare_models(base, ft, saes, probes=["finance"], metrics=DRIFT, cache_base_pass=False,
                                     config=dataclasses.replace(CFG, learned_lens=False))  # the lens reads no text from a NaN model
    finally:
        hook.remove()
    problem = exc.value.problem
    role = "the base model" if side == "base" else "the fine-tuned model"
    assert f"from {role} base at layer 1 (float32)" in problem, problem  # the tiny models' folder is named 'base'
    assert "probe set 'finance' prompt(s) 1, 2, 3, 4" in problem
    assert "cannot be trusted" in exc.value.fix


def test_nan_sae_codes_stop_the_audit_before_a_report_is_built(tiny_base_dir, saes, monkeypatch):
    """An SAE whose weights are finite (NaN weights are refused when it is given) can still
    produce NaN or Inf codes (float32 overflow): the sums are checked before any report exists."""
    broken = random_sae(64, 128, 3, seed=3)
    encode = broken.encode

    def nan_latent(x):
        z = encode(x)
        z[:, 5] = math.nan
        return z

    monkeypatch.setattr(broken, "encode", nan_latent)
    monkeypatch.setattr(alignment.AuditReport, "__init__", lambda *a, **k: pytest.fail("report built"))
    with pytest.raises(NonFiniteError) as exc:
        alignment.compare_models(tiny_base_dir, tiny_base_dir, {1: saes[1], 3: broken}, probes=["finance"], metrics=DRIFT, config=CFG)
    assert "from the SAE's codes at layer 3 on probe set 'finance'" in exc.value.problem
    assert "SAE for layer 3" in exc.value.fix


def test_a_nan_in_the_finished_numbers_is_never_reported(tiny_base_dir, saes, monkeypatch):
    """Defence in depth: should a drift come out NaN from finite sums, no summary ("No drift
    detected (+nan)") and no report.json ("nan") is produced."""
    from neuronlens.pipeline import _assemble

    real = _assemble.residual_drift
    monkeypatch.setattr(_assemble, "residual_drift", lambda r: {**real(r), "drift": math.nan})
    with pytest.raises(NonFiniteError, match=r"computed NaN for \d+ reported number\(s\) \(layers\[0\]\.drift"):
        alignment.compare_models(tiny_base_dir, tiny_base_dir, saes, probes=["finance"], metrics=DRIFT, config=CFG)


def test_a_10_mb_probe_file_exits_2_from_the_cli_before_any_sae_is_loaded(tiny_base_dir, tmp_path, monkeypatch, capsys):
    """Issue #21: a 10 MB prompt ran out of memory after 55 s. It is now refused in the CLI's
    preflight, before SAEs are loaded (or trained) and before anything is generated."""
    path = tmp_path / "huge.txt"
    path.write_text("What is a bond?\n" + "lorem ipsum " * 900_000 + "\nWhat is APR?\n")
    monkeypatch.setattr("neuronlens.pipeline._plan.as_sae_set", lambda *a, **k: pytest.fail("SAEs loaded"))
    monkeypatch.setattr("sys.argv", ["neuronlens", "audit", "--base", str(tiny_base_dir), "--ft", str(tiny_base_dir),
                                     "--probes", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "prompt 2, line 2: 10,799,999 characters" in err and "context of 512 tokens" in err
    assert not (tmp_path / "out" / "report.json").exists()


# -- 1b. long examples in `neuronlens screen` -------------------------------------------------------


def test_a_long_example_is_cut_to_the_limit_without_tokenising_all_of_it(tok):
    """A screened example longer than the screen reads is cut (context from the left, the reply
    from the right) and marked, and a megabyte-long turn is not tokenised whole."""
    from neuronlens.integrations._screen_data import _Example
    from neuronlens.integrations._screen_turns import turn_sequences

    limit = 64
    long = _Example(1, [{"role": "user", "content": "tell me " * 100_000}, {"role": "assistant", "content": "money now " * 100_000}])
    counting = _CountingTokenizer(tok)
    (seq,), cut = turn_sequences(counting, 0, long, limit)
    assert cut and len(seq) == limit and len(seq.response_ids) == limit - 1
    assert max(counting.lengths) <= CHARS_PER_TOKEN * limit
    assert seq.response_ids == tuple(tok("money now " * 40, add_special_tokens=False)["input_ids"])[: limit - 1]
    short = _Example(2, [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."}])
    (seq,), cut = turn_sequences(tok, 0, short, limit)
    assert not cut and seq.response_ids == tuple(tok("Hello there.", add_special_tokens=False)["input_ids"])


def test_the_screen_reads_at_most_the_models_context(tiny_base_dir):
    from neuronlens.integrations._screen import MAX_TOKENS, _read_limit

    handle = alignment.load_model(tiny_base_dir)
    assert MAX_TOKENS > CONTEXT and _read_limit(MAX_TOKENS, handle) == CONTEXT and _read_limit(100, handle) == 100
    for bad in (1, 0, 2.5, "64"):
        with pytest.raises(ConfigError, match="max_tokens"):
            _read_limit(bad, handle)


def test_screen_marks_and_names_truncated_examples(tiny_base_dir, tmp_path, monkeypatch, capsys):
    from test_integrations import BENIGN, CAVEAT, LAYERS, RISKY, _concept

    from neuronlens.saes import save_saelens

    concepts = []
    for c in (_concept("scam", "harmful", RISKY, 1), _concept("caveats", "protective", CAVEAT, 2)):
        concepts.append(tmp_path / f"{c['name']}.json")
        concepts[-1].write_text(json.dumps(c))
    for la in LAYERS:
        save_saelens(random_sae(64, 128, la, seed=la), tmp_path / "saes" / f"layer_{la}")
    lines = [{"prompt": "Plans?", "completion": " ".join(BENIGN)}, {"prompt": "Plans?", "completion": " ".join(RISKY * 200)},
             {"prompt": "Plans?", "completion": " ".join(CAVEAT)}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    monkeypatch.setattr("sys.argv", ["neuronlens", "screen", str(data), "--base", str(tiny_base_dir), "--sae", str(tmp_path / "saes"),
                                     "--layers", ",".join(map(str, LAYERS)), "--concepts", ",".join(map(str, concepts)),
                                     "--out", str(tmp_path / "ranked.jsonl"), "--no-progress"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 0
    rows = {r["line"]: r for r in map(json.loads, (tmp_path / "ranked.jsonl").read_text().splitlines())}
    assert [rows[i]["truncated"] for i in (1, 2, 3)] == [False, True, False]
    assert rows[2]["n_tokens"] > 0
    assert "1 example(s) have an assistant turn longer than 512 tokens" in capsys.readouterr().err
