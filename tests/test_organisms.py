"""The organism registry and its datasets, without training anything."""

from __future__ import annotations

import json

import pytest

from neuronlens.errors import ConfigError
from neuronlens.organisms import HELDOUT, ORGANISMS, ZOO, load_dataset, parse_chat_jsonl
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
    with pytest.raises(ConfigError, match="No dataset"):
        load_dataset("no_such_dataset")


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
