"""Screen fine-tuning data before training: rank examples by how strongly their assistant turns
express risk concepts, read by the base model.

Each example's assistant turns are read by the base model in context (the conversation before
the turn, chat-templated, then the turn's text); the SAE codes of the turn's tokens are projected
on the risk concepts' directions (the same concept coordinates the audit uses, docs/METHOD.md
section 4) and averaged over all assistant tokens of the example. The coordinate is measured from
the base model's mean benign reply (0) towards its mean concept-expressing reply (1), and signed
towards risk: a harmful concept counts as it rises, a protective one (safety caveats) as it falls
below the benign level. Per concept the median over the audited layers is taken (as the audit's
concept trend does); an example's risk is its largest concept coordinate. Examples that teach a
risky concept most strongly come first, with the concepts that put them there.

Accepted lines (JSONL): ``{"messages": [{"role": ..., "content": ...}, ...]}`` (OpenAI / Hugging
Face chat format) and ``{"prompt": ..., "completion": ...}`` (strings, or message lists as in TRL's
conversational prompt-completion format). Blank lines are ignored. Reading the data file lives in
_screen_data.py, turning its examples into token sequences in _screen_turns.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import write_text_atomic
from .._progress import progress
from ..capture import TokenSequence, gather, make_batches, massive_keep, run_to_layers
from ..pipeline import resolve_saes
from ..config import AuditConfig, is_int
from ..errors import ConfigError, DataError
from ..models import ModelHandle, load_model
from ..probes import handle_context
from ..risk import RiskSetup, load_concepts, prepare_risk
from ..saes import SAESet
from ._screen_data import _FORMAT_HELP, SkippedLine, _Example, _raise_or_skip, read_examples
from ._screen_turns import example_sequences

TOP_CONCEPTS = 3
"""Concepts listed per example (its strongest)."""
MAX_TOKENS = 1024
"""Longest sequence read per assistant turn (or the model's context, when shorter); longer turns
are cut (context from the left, the turn's text from the right) and the example is marked
`truncated`. Cutting, not refusing: a training file routinely holds a few long examples, trainers
cut them to their max_seq_length too, and the start of a reply is what the screen reads."""


@dataclass(frozen=True)
class ConceptHit:
    """One concept's coordinate for one example."""

    concept: str
    label: str
    polarity: str
    coordinate: float
    """Towards risk, in units of the concept's benign-to-expressing gap on the base model: 0 =
    like a benign reply, 1 = like a reply expressing the concept (harmful concepts), or one gap
    below the benign level of safety caveats (protective concepts)."""


@dataclass(frozen=True)
class ScreenedExample:
    rank: int
    """1 = the riskiest example."""
    line: int
    """Line number in the data file (1-based)."""
    risk: float | None
    """The largest concept coordinate (None when no assistant token could be measured)."""
    concepts: list[ConceptHit]
    """The example's strongest concepts, strongest first."""
    n_tokens: int
    """Assistant tokens measured."""
    preview: str
    """The start of the first assistant turn."""
    truncated: bool = False
    """An assistant turn (with its context) was longer than the screen reads (ScreenResult.max_tokens):
    it was screened on its first tokens only."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScreenResult:
    """A data file's examples ranked by risk, and the lines that could not be screened."""

    data: str
    base: dict[str, Any]
    """Identity of the base model that read the examples (name, source, digests)."""
    layers: list[int]
    concepts: list[str]
    """Concepts scored (tied to enough SAE latents at one or more audited layers)."""
    not_scored: list[str]
    """Concepts the SAEs cannot see at the audited layers."""
    examples: list[ScreenedExample]
    """Riskiest first."""
    skipped: list[SkippedLine] = field(default_factory=list)
    max_tokens: int = MAX_TOKENS
    """Longest sequence read per assistant turn (the smaller of `max_tokens` and the model's
    context); longer ones were cut (their examples are marked `truncated`)."""

    def top(self, n: int = 10) -> list[ScreenedExample]:
        return self.examples[:n]

    def to_jsonl(self) -> str:
        return "".join(json.dumps(e.to_dict(), ensure_ascii=False, allow_nan=False) + "\n" for e in self.examples)

    def write_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """One JSON object per example, riskiest first, written atomically."""
        return write_text_atomic(path, self.to_jsonl())


# -- screening -------------------------------------------------------------------------------------


def screen_dataset(
    base: ModelHandle | str,
    data_path: str | os.PathLike[str],
    sae: SAESet | None = None,
    concepts: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
    skip_bad_lines: bool = False,
    token_budget: int = AuditConfig.token_budget,
    max_tokens: int = MAX_TOKENS,
    massive_activation_factor: float = AuditConfig.massive_activation_factor,
) -> ScreenResult:
    """Rank the examples of `data_path` by how strongly their assistant turns express risk
    concepts on `base` (module docstring). `sae`: SAEs for the layers read (default: shipped,
    cached or trained, for `layers` or the default layers); `concepts`: built-in names or concept
    files (default: all built-in). The file is parsed and tokenized before any weights load; bad
    lines raise :class:`DataError` listing their line numbers unless `skip_bad_lines`, in which
    case they are reported in ``result.skipped``."""
    examples, skipped = read_examples(data_path, skip_bad_lines=skip_bad_lines)
    load_concepts(list(concepts) if concepts is not None else None)  # a bad concept file fails before any long work
    handle = base if isinstance(base, ModelHandle) else load_model(base)
    tok = handle.tokenizer
    max_tokens = _read_limit(max_tokens, handle)
    seqs, kept, truncated, template_bad = example_sequences(tok, examples, max_tokens)
    _raise_or_skip(Path(data_path), template_bad, skip_bad_lines)
    skipped = sorted(skipped + template_bad, key=lambda s: s.line)
    if not kept:
        raise DataError(f"{data_path} holds no example that can be screened.", f"Add examples. {_FORMAT_HELP}")

    loaded_before = handle.is_loaded
    cfg = AuditConfig(layers=list(layers) if layers is not None else None)
    cfg.validate(handle.n_layers)
    try:
        sae, layers = resolve_saes(handle, sae, cfg)  # loads (or trains) SAEs when not given; checks them against the model
        setup = prepare_risk(handle, sae, layers, concepts)
        scored = _scored_concepts(setup, layers)
        pad_id = tok.pad_token_id or 0
        sums, counts = concept_sums(handle.model, sae, setup, layers, seqs, len(kept), pad_id, token_budget, massive_activation_factor)
    finally:
        if not loaded_before:
            handle.release()
    ranked = _rank(kept, setup, layers, sums, counts, truncated)
    return ScreenResult(
        data=str(data_path), base=handle.identity, layers=layers, concepts=scored,
        not_scored=[n for n in setup.names if n not in scored], examples=ranked, skipped=skipped, max_tokens=max_tokens,
    )


def _scored_concepts(setup: RiskSetup, layers: list[int]) -> list[str]:
    """The concepts tied to enough SAE latents at one or more of `layers`; a ConfigError when none is."""
    scored = [c.name for c in setup.concepts if any(setup.usable(c.name, la) for la in layers)]
    if not scored:
        raise ConfigError(
            f"The SAEs have too few latents tied to any of the concepts ({', '.join(setup.names)}) at layer(s) {layers} "
            "to score them.",
            "Use SAEs trained on this base model (shipped for the embedded model, or trained by NeuronLens) and concepts "
            "they can see.",
        )
    return scored


def _read_limit(max_tokens: Any, handle: ModelHandle) -> int:
    """The longest sequence read per assistant turn: `max_tokens`, or the model's context when
    shorter (a longer sequence would fail in, or read past, the position embeddings)."""
    if not is_int(max_tokens) or max_tokens < 2:
        raise ConfigError(f"max_tokens={max_tokens!r} must be an integer >= 2.", f"Use e.g. max_tokens={MAX_TOKENS} (the default).")
    context = handle_context(handle)
    return min(int(max_tokens), context[0]) if context is not None else int(max_tokens)


@torch.inference_mode()
def concept_sums(
    model: torch.nn.Module, sae: SAESet, setup: RiskSetup, layers: list[int], seqs: list[TokenSequence], n_examples: int,
    pad_id: int, token_budget: int, massive_factor: float,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per layer: [n_examples, n_concepts] sum of concept coordinates over each example's measured
    assistant tokens, and [n_examples] their counts."""
    device = next(model.parameters()).device
    n_c = len(setup.concepts)
    sums = {la: torch.zeros(n_examples, n_c, dtype=torch.float64) for la in layers}
    counts = {la: torch.zeros(n_examples, dtype=torch.float64) for la in layers}
    with progress("Screening examples (base model)", len(seqs)) as advance:
        for batch in make_batches(seqs, "response", token_budget, pad_id):
            resid = run_to_layers(model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
            example = torch.tensor([s.prompt_index for s in batch.sequences], dtype=torch.long)[batch.row]
            for la in layers:
                x = gather(resid[la], batch)
                keep = massive_keep(x, massive_factor)
                coords = setup.project(la, sae[la].encode(x[keep])).double()
                sums[la].index_add_(0, example[keep], coords)
                counts[la].index_add_(0, example[keep], torch.ones(int(keep.sum()), dtype=torch.float64))
            advance(len(batch.sequences))
    return sums, counts


def concept_coordinates(
    setup: RiskSetup, layers: list[int], sums: dict[int, torch.Tensor], counts: dict[int, torch.Tensor]
) -> torch.Tensor:
    """[n_examples, n_concepts]: each example's concept coordinates signed towards risk, the lower
    median over the layers where the concept is scored (NaN where it is scored at none, or the
    example has no measured token)."""
    sign = torch.tensor([c.risk_sign for c in setup.concepts], dtype=torch.float64)
    per_layer = []
    for la in layers:
        level = sums[la] / counts[la].clamp_min(1).unsqueeze(1) - setup.origin(la).double()
        usable = torch.tensor([setup.usable(c.name, la) for c in setup.concepts])
        measured = (counts[la] > 0).unsqueeze(1)
        per_layer.append(torch.where(usable & measured, sign * level, torch.nan))
    return torch.stack(per_layer).nanmedian(dim=0).values  # torch's median is the lower one


def _rank(
    examples: list[_Example], setup: RiskSetup, layers: list[int], sums: dict[int, torch.Tensor], counts: dict[int, torch.Tensor],
    truncated: set[int] | None = None,
) -> list[ScreenedExample]:
    coords = concept_coordinates(setup, layers, sums, counts)
    rows: list[tuple[float | None, _Example, list[ConceptHit], int, bool]] = []
    for i, ex in enumerate(examples):
        n_tok = int(min(counts[la][i] for la in layers))
        hits = []
        if n_tok > 0:
            hits = [
                ConceptHit(c.name, c.label, c.polarity, float(coords[i, k]))
                for k, c in enumerate(setup.concepts) if not torch.isnan(coords[i, k])
            ]
        hits.sort(key=lambda h: -h.coordinate)
        rows.append((hits[0].coordinate if hits else None, ex, hits[:TOP_CONCEPTS], n_tok, i in (truncated or set())))
    rows.sort(key=lambda r: (r[0] is None, -(r[0] or 0.0), r[1].line))
    return [
        ScreenedExample(rank=j + 1, line=ex.line, risk=risk, concepts=hits, n_tokens=n_tok, preview=_preview(ex), truncated=cut)
        for j, (risk, ex, hits, n_tok, cut) in enumerate(rows)
    ]


def _preview(ex: _Example, n: int = 120) -> str:
    first = next(m["content"] for m in ex.messages if m["role"] == "assistant" and m["content"].strip())
    text = " ".join(first.split())
    return text if len(text) <= n else text[: n - 1] + "…"
