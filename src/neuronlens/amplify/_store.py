"""Cached amplified answers: one entry per (base, fine-tune, probe set, settings), written
atomically and checksummed by ``neuronlens._cache`` (a corrupt or stale entry is regenerated)."""

from __future__ import annotations

from typing import Any

from .._cache import load_json_entry, store_json_entry
from ..probes import ProbeSet
from ._settings import AmplifySettings

KIND = "amplified"


def entry_key(base_digest: str, ft_digest: str, probe_set: ProbeSet, tokenizer: str, settings: AmplifySettings) -> dict[str, Any]:
    """Everything the answers depend on: both models' digests, the prompts, the tokenizer (vocab,
    special tokens, chat template) and the settings (alpha, length, samples, sampling)."""
    return {
        "base": base_digest,
        "ft": ft_digest,
        "probe_set": probe_set.digest,
        "tokenizer": tokenizer,
        **settings.key(),
    }


def load_answers(key: dict[str, Any], n_rows: int) -> list[tuple[int, ...]] | None:
    """The cached answers of `n_rows` rows (prompt-major, then sample), or None."""
    cached = load_json_entry(KIND, key)
    if not isinstance(cached, list) or len(cached) != n_rows:
        return None
    return [tuple(int(t) for t in row) for row in cached]


def store_answers(key: dict[str, Any], answers: list[tuple[int, ...]]) -> None:
    store_json_entry(KIND, key, [list(a) for a in answers])
