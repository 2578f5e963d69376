"""The built-in SAE training corpus: ~300 varied chat prompts (written for this project) with
the base model's own greedy answers, plus every reply of the concept library. Training on
the model's own chat distribution matches what the audit reads (assistant responses); adding the
concept replies makes sure the dictionary has room for the concepts the risk stage looks for."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from ..capture import TokenSequence
from ..concepts import load_concepts, pair_sequences
from ..probes import ProbeSet, response_sequences

CORPUS_RESPONSE_TOKENS = 96


def corpus_prompts() -> ProbeSet:
    text = resources.files("neuronlens.saes.corpus").joinpath("prompts.jsonl").read_text(encoding="utf-8")
    prompts = tuple(json.loads(line)["prompt"] for line in text.splitlines() if line.strip())
    return ProbeSet("sae_corpus", prompts, "builtin")


def concept_sequences(tokenizer: Any) -> list[TokenSequence]:
    return [seq for concept in load_concepts() for seq in pair_sequences(tokenizer, concept)[0]]


def corpus_sequences(handle: Any, *, on_batch: Any = None) -> list[TokenSequence]:
    generated = response_sequences(handle, [corpus_prompts()], CORPUS_RESPONSE_TOKENS, on_batch=on_batch)
    return generated + concept_sequences(handle.tokenizer)
