"""``amplified_responses``: the fine-tune's answers to the probes with its difference from the base
model amplified, validated first, generated only where not cached."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._memory import release_free_memory
from ..capture import TokenSequence
from ..errors import ConfigError
from ..models import ModelHandle
from ..probes import ProbeSet, checked_prompt_ids, handle_context, pad_id, stop_ids
from ._decode import Decoding, Row, generate_rows, row_seed
from ._settings import AmplifySettings
from ._sides import check_pair, model_pair, tokenizer_digest
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
    the same `token_budget`.

    Raises ConfigError (alpha <= 0, NaN or infinite; other bad settings), ModelLoadError
    (different tokenizers or vocabularies; an adapter with no loadable base) and ProbeError (a
    prompt too long for the context) before any model runs. Answers are cached by both digests,
    the prompts, the tokenizer and the settings.
    """
    settings = AmplifySettings(alpha, max_new_tokens, samples, seed, temperature, greedy).validate()
    _check_budget(token_budget)
    sets = _probe_sets(prompts)
    check_pair(base, ft)
    tok = ft.tokenizer
    tok_digest = tokenizer_digest(tok)
    keys = [entry_key(base, ft, ps, tok_digest, settings) for ps in sets]
    context = handle_context(ft)
    rows = [_rows(tok, ps, settings, context) for ps in sets]
    use_cache = use_cache and base.cacheable and ft.cacheable
    answers = [load_answers(k, len(r)) if use_cache else None for k, r in zip(keys, rows)]
    missing = [i for i, a in enumerate(answers) if a is None]
    if on_batch is not None and len(missing) < len(sets):
        on_batch(sum(len(rows[i]) for i in range(len(sets)) if i not in missing))
    if missing:
        _generate_missing(base, ft, settings, rows, answers, token_budget, on_batch)
    for i in missing if use_cache else ():
        store_answers(keys[i], answers[i])  # type: ignore[arg-type]
    return [seq for ps, r, a in zip(sets, rows, answers) for seq in _sequences(ps, r, a, settings.samples)]  # type: ignore[arg-type]


def _generate_missing(
    base: ModelHandle, ft: ModelHandle, settings: AmplifySettings, rows: list[list[Row]],
    answers: list[list[tuple[int, ...]] | None], token_budget: int, on_batch: Progress | None,
) -> None:
    """Fill the uncached entries of `answers` in place, with the models resident only meanwhile."""
    tok = ft.tokenizer
    with model_pair(base, ft) as pair:
        dec = Decoding(
            alpha=float(settings.alpha),
            max_new_tokens=settings.max_new_tokens,
            pad_id=pad_id(tok),
            stop_ids=frozenset(stop_ids(tok, pair.ft_model)),
            greedy=settings.greedy,
            temperature=float(settings.temperature),
        )
        for i, set_rows in enumerate(rows):
            if answers[i] is None:
                answers[i] = generate_rows(pair, set_rows, dec, token_budget=token_budget, on_batch=on_batch)
    release_free_memory()  # the KV caches' freed blocks would otherwise stay resident (see neuronlens._memory)


def _rows(tok: object, ps: ProbeSet, settings: AmplifySettings, context: tuple[int, str] | None) -> list[Row]:
    """One row per (prompt, sample), prompt-major; a prompt too long for the model's context (with
    the answer budget) raises ProbeError here, as the own-response generation does."""
    ids = checked_prompt_ids(tok, ps, range(len(ps.prompts)), settings.max_new_tokens, context)
    return [Row(p, row_seed(settings.seed, ps.name, i, s)) for i, p in enumerate(ids) for s in range(settings.samples)]


def _sequences(ps: ProbeSet, rows: list[Row], answers: list[tuple[int, ...]], samples: int) -> list[AmplifiedSequence]:
    return [
        AmplifiedSequence(ps.name, j // samples, row.prompt, answer, sample=j % samples)
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
