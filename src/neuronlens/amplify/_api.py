"""``amplified_responses``: the fine-tune's answers to the probes with its difference from the base
model amplified, validated first, generated only where not cached."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from .._memory import release_free_memory
from ..capture import TokenSequence
from ..errors import ConfigError
from ..models import ModelHandle
from ..probes import ProbeSet, checked_prompt_ids, handle_context, pad_id, shard_indices, stop_ids
from ._decode import Decoding, Pair, Row, generate_rows, row_seed
from ._settings import AmplifySettings
from ._sides import check_pair, check_strategy, model_pair, tokenizer_digest
from ._store import entry_key, load_answers, store_answers

Progress = Callable[[int], None]


@dataclass(frozen=True)
class AmplifiedSequence(TokenSequence):
    """A templated prompt and one amplified answer to it; `sample` numbers the answers to one prompt."""

    sample: int = 0


def amplified_responses(
    base: ModelHandle,
    ft: ModelHandle,
    prompts: ProbeSet | Sequence[ProbeSet] | Sequence[str],
    *,
    alpha: float,
    max_new_tokens: int = 48,
    samples: int = 1,
    seed: int = 0,
    temperature: float = 1.0,
    greedy: bool = True,
    token_budget: int = 4096,
    use_cache: bool = True,
    on_batch: Progress | None = None,
    strategy: str = "auto",
) -> list[AmplifiedSequence]:
    """The fine-tune's answers generated from ``logits_ft + alpha * (logits_ft - logits_base)``.

    `prompts`: probe sets (or plain prompt strings), templated with the fine-tune's chat template
    as the own responses are. Returns one sequence per (set, prompt, sample), in that order. Greedy
    by default; ``greedy=False`` samples ``softmax(logits / temperature)`` with one stream per
    (seed, set, prompt, sample), so the same inputs give the same answers whatever the batching.
    Each side keeps its own KV cache and computes only the last position's logits. `on_batch(n)`
    is called as answers are done (cached ones at once), with how many.

    Memory: a PEFT adapter on `base` keeps one model resident (the adapter is injected into the
    base weights; both sides run on that module, for LoRA in one batch whose base rows peft runs
    without the adapter). A full
    checkpoint (or an adapter on another base) keeps both models resident during the generation,
    released afterwards unless loaded before: SmolLM2-135M in float32 is 0.54 GB of weights per
    model. Either way there are two KV caches, each the size of the own-response generation's for
    the same `token_budget`. `strategy` picks how such an adapter runs both sides
    (``amplify.STRATEGIES``; the same answers, 'auto' the fastest).

    Raises ConfigError (alpha <= 0, NaN or infinite; other bad settings), ModelLoadError
    (different tokenizers or vocabularies; an adapter with no loadable base) and ProbeError (a
    prompt too long for the context) before any model runs. Answers are cached by both digests,
    the prompts, the tokenizer and the settings.
    """
    settings = AmplifySettings(alpha, max_new_tokens, samples, seed, temperature, greedy).validate()
    _check_budget(token_budget)
    check_strategy(strategy)
    sets = _probe_sets(prompts)
    check_pair(base, ft)
    job = _Job(base.digest, ft.digest, ft.tokenizer, settings, token_budget, use_cache and base.cacheable and ft.cacheable)
    return _answers(lambda: model_pair(base, ft, strategy), job, sets, handle_context(ft), None, on_batch)


def resident_amplified_responses(
    sides: Callable[[], AbstractContextManager[Pair]],
    tokenizer: Any,
    probe_sets: Sequence[ProbeSet],
    *,
    base_digest: str,
    ft_digest: str,
    alpha: float,
    max_new_tokens: int = 48,
    samples: int = 1,
    seed: int = 0,
    temperature: float = 1.0,
    greedy: bool = True,
    token_budget: int = 4096,
    use_cache: bool = True,
    on_batch: Progress | None = None,
    shard: tuple[int, int] | None = None,
) -> list[AmplifiedSequence]:
    """:func:`amplified_responses` for models that are already resident (the audit's, which holds
    them anyway): `sides()` opens the pair of sides and is called only when something must be
    generated: ``lambda: nullcontext(module_pair(peft_model))`` for a PEFT model whose base is
    its adapter switched off, ``module_pair(ft_nn, base_nn)`` for two modules. `tokenizer` is the
    fine-tune's; the prompts' fit in the context is the caller's to check. Answers are cached under
    the keys of :func:`amplified_responses` (`base_digest`, `ft_digest`, the prompts, the
    tokenizer, the settings), so the two share them; ``use_cache=False`` for a model whose weights
    change under one digest. `shard=(rank, world_size)`: only the prompts i with
    i % world_size == rank (a data-parallel audit's share), read from the full set's cache entry
    when there is one, else generated and cached under an entry that names the shard; the
    sequences keep i as their prompt_index. Same seeds per prompt, so a shard's answers are the
    full set's."""
    settings = AmplifySettings(alpha, max_new_tokens, samples, seed, temperature, greedy).validate()
    _check_budget(token_budget)
    job = _Job(base_digest, ft_digest, tokenizer, settings, token_budget, use_cache)
    return _answers(sides, job, list(probe_sets), None, shard, on_batch)


@dataclass(frozen=True)
class _Job:
    """What the answers depend on, and how they are generated."""

    base_digest: str
    ft_digest: str
    tokenizer: Any
    settings: AmplifySettings
    token_budget: int
    use_cache: bool


def _answers(
    sides: Callable[[], AbstractContextManager[Pair]], job: _Job, sets: list[ProbeSet], context: tuple[int, str] | None,
    shard: tuple[int, int] | None, on_batch: Progress | None,
) -> list[AmplifiedSequence]:
    """Every (set, prompt of the shard, sample)'s answer: cached ones read, the others generated
    with the pair `sides()` opens (once, only if something is missing) and stored."""
    tok_digest = tokenizer_digest(job.tokenizer)
    index = [shard_indices(len(ps.prompts), shard) for ps in sets]
    keys = [_key(job, ps, tok_digest, ix, shard) for ps, ix in zip(sets, index)]
    rows = [_rows(job.tokenizer, ps, job.settings, context, ix) for ps, ix in zip(sets, index)]
    answers = [_cached(job, k, ps, ix) for k, ps, ix in zip(keys, sets, index)]
    missing = [i for i, a in enumerate(answers) if a is None]
    if on_batch is not None and len(missing) < len(sets):
        on_batch(sum(len(rows[i]) for i in range(len(sets)) if i not in missing))
    if missing:
        _generate_missing(sides, job, rows, answers, on_batch)
    for i in missing if job.use_cache else ():
        store_answers(keys[i], answers[i])  # type: ignore[arg-type]
    return [
        seq for ps, ix, r, a in zip(sets, index, rows, answers) for seq in _sequences(ps, ix, r, a, job.settings.samples)  # type: ignore[arg-type]
    ]


def _key(job: _Job, ps: ProbeSet, tok_digest: str, index: list[int], shard: tuple[int, int] | None) -> dict[str, Any]:
    """The cache key of set `ps`'s answers; a shard's names the shard (as the own responses' do)."""
    key = entry_key(job.base_digest, job.ft_digest, ps, tok_digest, job.settings)
    return key if len(index) == len(ps.prompts) else {**key, "shard": list(shard or (0, 1))}


def _cached(job: _Job, key: dict[str, Any], ps: ProbeSet, index: list[int]) -> list[tuple[int, ...]] | None:
    """The cached answers of the prompts `index` of `ps`: a shard's own entry, or its rows of the
    full set's entry; None when neither is cached (or caching is off)."""
    if not job.use_cache:
        return None
    samples = job.settings.samples
    if len(index) == len(ps.prompts):
        return load_answers(key, len(index) * samples)
    if not index:
        return []
    full = load_answers({k: v for k, v in key.items() if k != "shard"}, len(ps.prompts) * samples)
    if full is not None:
        return [full[i * samples + s] for i in index for s in range(samples)]
    return load_answers(key, len(index) * samples)


def _generate_missing(
    sides: Callable[[], AbstractContextManager[Pair]], job: _Job, rows: list[list[Row]],
    answers: list[list[tuple[int, ...]] | None], on_batch: Progress | None,
) -> None:
    """Fill the uncached entries of `answers` in place, with the pair open only meanwhile."""
    settings = job.settings
    with sides() as pair:
        dec = Decoding(
            alpha=float(settings.alpha),
            max_new_tokens=settings.max_new_tokens,
            pad_id=pad_id(job.tokenizer),
            stop_ids=frozenset(stop_ids(job.tokenizer, pair.ft_model)),
            greedy=settings.greedy,
            temperature=float(settings.temperature),
        )
        for i, set_rows in enumerate(rows):
            if answers[i] is None:
                answers[i] = generate_rows(pair, set_rows, dec, token_budget=job.token_budget, on_batch=on_batch)
    release_free_memory()  # the KV caches' freed blocks would otherwise stay resident (see neuronlens._memory)


def _rows(tok: object, ps: ProbeSet, settings: AmplifySettings, context: tuple[int, str] | None, index: list[int]) -> list[Row]:
    """One row per (prompt of `index`, sample), prompt-major; a prompt too long for the model's
    context (with the answer budget) raises ProbeError here, as the own-response generation does."""
    ids = checked_prompt_ids(tok, ps, index, settings.max_new_tokens, context)
    return [Row(p, row_seed(settings.seed, ps.name, i, s)) for i, p in zip(index, ids) for s in range(settings.samples)]


def _sequences(ps: ProbeSet, index: list[int], rows: list[Row], answers: list[tuple[int, ...]], samples: int) -> list[AmplifiedSequence]:
    return [
        AmplifiedSequence(ps.name, index[j // samples], row.prompt, answer, sample=j % samples)
        for j, (row, answer) in enumerate(zip(rows, answers))
    ]


def _probe_sets(prompts: ProbeSet | Sequence[ProbeSet] | Sequence[str]) -> list[ProbeSet]:
    """`prompts` as probe sets: one set, several, or plain strings (a set named 'prompts')."""
    if isinstance(prompts, ProbeSet):
        return [prompts]
    if isinstance(prompts, str):
        prompts = [prompts]
    items = list(prompts)
    if items and all(isinstance(p, str) for p in items):
        return [ProbeSet("prompts", tuple(items), "in-memory")]  # type: ignore[arg-type]
    if not items or not all(isinstance(p, ProbeSet) and p.prompts for p in items):
        raise ConfigError(
            "amplified_responses needs at least one prompt: pass probe sets with prompts, or a list of prompt strings.",
            "Pass load_probe_set('finance') (or several), or a list of strings.",
        )
    return items  # type: ignore[return-value]


def _check_budget(token_budget: object) -> None:
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1:
        raise ConfigError(f"token_budget={token_budget!r} is not a whole number >= 1.", "Pass token_budget=4096 (or lower to save memory).")
