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
conversational prompt-completion format). Blank lines are ignored.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import read_user_text, write_text_atomic
from .._progress import progress
from ..capture import TokenSequence, gather, make_batches, massive_keep, run_to_layers
from ..pipeline import resolve_saes
from ..config import AuditConfig, is_int
from ..errors import ConfigError, DataError
from ..models import ModelHandle, load_model
from ..probes import CHARS_PER_TOKEN, handle_context
from ..risk import RiskSetup, load_concepts, prepare_risk
from ..saes import SAESet

TOP_CONCEPTS = 3
"""Concepts listed per example (its strongest)."""
MAX_TOKENS = 1024
"""Longest sequence read per assistant turn (or the model's context, when shorter); longer turns
are cut (context from the left, the turn's text from the right) and the example is marked
`truncated`. Cutting, not refusing: a training file routinely holds a few long examples, trainers
cut them to their max_seq_length too, and the start of a reply is what the screen reads."""
_SHOWN_BAD_LINES = 10
_WHITESPACE = re.compile(r"\s*")
_HEADER_CELL = re.compile(r"[\w .\-\"']{1,64}")
"""A CSV header cell: a short column name."""
_FORMAT_HELP = (
    'The screener reads chat JSONL: each line must be one JSON object, {"messages": [{"role": "user", "content": "..."}, '
    '{"role": "assistant", "content": "..."}]} or {"prompt": "...", "completion": "..."}.'
)


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


@dataclass(frozen=True)
class SkippedLine:
    line: int
    reason: str


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


# -- reading the data file -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Example:
    line: int
    messages: list[dict[str, str]]


def read_examples(path: str | os.PathLike[str], *, skip_bad_lines: bool = False) -> tuple[list[_Example], list[SkippedLine]]:
    """Parse a JSONL data file. Bad lines raise one :class:`DataError` naming their numbers and
    what is wrong with each, unless `skip_bad_lines` (then they are returned as skipped). A file
    in a whole-file format (a JSON array or object, CSV, Parquet) is refused as such, whatever
    `skip_bad_lines`: none of its lines could be screened."""
    p = _data_file(path)
    text = _read_text(p)
    examples: list[_Example] = []
    bad: list[SkippedLine] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            messages = _messages_of(json.loads(line))
        except json.JSONDecodeError as exc:
            bad.append(SkippedLine(lineno, f"not valid JSON ({exc.msg})"))
            continue
        except ValueError as exc:
            bad.append(SkippedLine(lineno, str(exc)))
            continue
        examples.append(_Example(lineno, messages))
    if bad and not examples:
        wrong_format = _whole_file_format_error(p, text)
        if wrong_format is not None:
            raise wrong_format
    _raise_or_skip(p, bad, skip_bad_lines)
    return examples, bad


def _data_file(path: str | os.PathLike[str]) -> Path:
    """`path` as a Path, once it is known to be a file: a missing path and a folder get errors
    that say which it is (a folder is not 'missing')."""
    p = Path(path).expanduser()
    if p.is_dir():
        inside = sorted(f.name for f in p.glob("*.jsonl"))[:3]
        example = f", e.g. {str(p / inside[0])!r}" if inside else ""
        raise DataError(
            f"Data file {str(p)!r} is a folder, not a file.",
            f"Pass the path of a .jsonl file of fine-tuning examples{example}.",
        )
    if not p.exists():
        raise DataError(f"Data file {str(p)!r} does not exist.", "Pass the path of a .jsonl file of fine-tuning examples.")
    if not p.is_file():
        raise DataError(f"Data file {str(p)!r} is not a regular file.", "Pass the path of a .jsonl file of fine-tuning examples.")
    return p


def _read_text(p: Path) -> str:
    """The file's text (a UTF-8 byte order mark dropped); a Parquet file, which is binary, is
    named as such rather than reported as a decoding error."""
    try:
        with p.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise DataError(f"Data file {p} cannot be read: {exc.strerror or exc}.", "Check the path and its permissions.") from exc
    if magic == b"PAR1":
        raise DataError(
            f"{p} is a Parquet file; the screener reads JSONL.",
            f"{_FORMAT_HELP} Convert it with: {_pandas_hint('read_parquet', p)}",
        )
    return read_user_text(p, "Data file", DataError)


# -- files in a whole-file format ----------------------------------------------------------------


def _whole_file_format_error(p: Path, text: str) -> DataError | None:
    """A short error for a file none of whose lines is an example because it is not JSONL at all
    (one JSON array or object, pretty-printed objects, CSV), saying what the file is and how to
    convert it; None when it is not recognised (the lines are then reported one by one)."""
    values = _json_values(text)
    n_lines = sum(1 for line in text.splitlines() if line.strip())
    if values is not None:
        return _json_file_error(p, values, n_lines)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if _looks_like_csv(p, first):
        sep = "\\t" if "\t" in first and "," not in first else None
        return DataError(
            f"{p} looks like {'TSV' if sep else 'CSV'} (first line: {_clip(first, 80)!r}), not JSONL.",
            f"{_FORMAT_HELP} Convert the rows (columns 'prompt' and 'completion') with: "
            f"{_pandas_hint('read_csv', p, sep)}",
        )
    return None


def _json_file_error(p: Path, values: list[Any], n_lines: int) -> DataError | None:
    """The error for a file that parses as a stream of JSON values but not one object per line."""
    if len(values) == 1 and isinstance(values[0], list):
        return DataError(
            f"{p} is one JSON array ({len(values[0])} elements over {n_lines} line(s)), not JSONL.{_first_item_note(values[0])}",
            f"{_FORMAT_HELP} Write one array element per line: {_json_hint(p, 'json.load(f)')}",
        )
    if len(values) == 1 and isinstance(values[0], dict):
        key = next((k for k, v in values[0].items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)), None)
        if key is not None and not {"messages", "prompt", "completion"} & set(values[0]):
            items = values[0][key]
            return DataError(
                f"{p} is one JSON object whose {_clip(repr(key), 40)} holds a list of {len(items)} items, not JSONL."
                f"{_first_item_note(items)}",
                f"{_FORMAT_HELP} Write one item per line: {_json_hint(p, f'json.load(f)[{key!r}]')}",
            )
        if n_lines > 1:
            return DataError(
                f"{p} is one JSON object spread over {n_lines} lines (pretty-printed), not JSONL.",
                f"{_FORMAT_HELP} Write it on one line: {_json_hint(p, '[json.load(f)]')}",
            )
        return None
    if len(values) > 1 and n_lines > len(values):
        return DataError(
            f"{p} holds {len(values)} JSON values spread over {n_lines} lines (pretty-printed), not one per line.",
            f"{_FORMAT_HELP} Write each on one line, e.g. with jq: jq -c . {_quote(p)} > {_quote(_jsonl_path(p))}",
        )
    return None


def _json_values(text: str) -> list[Any] | None:
    """The JSON values `text` holds one after another (whitespace between them), or None when it
    is not such a stream."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i = _WHITESPACE.match(text, 0).end()  # type: ignore[union-attr]
    while i < len(text):
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return None
        values.append(value)
        i = _WHITESPACE.match(text, i).end()  # type: ignore[union-attr]
    return values


def _looks_like_csv(p: Path, first: str) -> bool:
    """A .csv/.tsv file, or a first line that reads as a header row (two or more short cells)."""
    if first[:1] in ("{", "["):
        return False
    if p.suffix.lower() in (".csv", ".tsv"):
        return True
    cells = re.split(r"[,\t]", first)
    return len(cells) >= 2 and all(_HEADER_CELL.fullmatch(c.strip()) for c in cells)


def _first_item_note(items: list[Any]) -> str:
    """' Its elements ... the first is not: <why>.' when the first element is no example itself."""
    if not items:
        return ""
    try:
        _messages_of(items[0])
    except ValueError as exc:
        return f" Its elements must each be one example; the first is not: {exc}."
    return ""


def _json_hint(src: Path, rows: str) -> str:
    """A Python one-liner writing `rows` (an expression of the loaded file `f`) as JSONL."""
    return (
        f"python -c \"import json; f = open({str(src)!r}); rows = {rows}; "
        f"open({str(_jsonl_path(src))!r}, 'w').writelines(json.dumps(r) + '\\n' for r in rows)\""
    )


def _pandas_hint(reader: str, src: Path, sep: str | None = None) -> str:
    """A pandas one-liner converting a table file to JSONL (one object per row)."""
    sep_arg = f", sep='{sep}'" if sep else ""
    return (
        f"python -c \"import pandas as pd; pd.{reader}({str(src)!r}{sep_arg}).to_json({str(_jsonl_path(src))!r}, "
        "orient='records', lines=True, force_ascii=False)\""
    )


def _jsonl_path(src: Path) -> Path:
    """Where a converted copy of `src` goes: beside it, never onto it."""
    dst = src.with_suffix(".jsonl")
    return dst if dst != src else src.with_name(src.stem + ".lines.jsonl")


def _quote(p: Path) -> str:
    import shlex

    return shlex.quote(str(p))


def _clip(text: str, n: int) -> str:
    """`text` cut to `n` characters (a long key or library message must not flood an error)."""
    return text if len(text) <= n else text[: n - 1] + "…"


def _raise_or_skip(path: Path, bad: list[SkippedLine], skip_bad_lines: bool) -> None:
    """Raise one DataError for the bad lines (the first few named with their reasons, the count of
    the rest), unless they are to be skipped."""
    if not bad or skip_bad_lines:
        return
    first = bad[:_SHOWN_BAD_LINES]
    rest = len(bad) - len(first)
    numbers = ", ".join(str(b.line) for b in first) + (f" and {rest} more" if rest else "")
    shown = "; ".join(f"line {b.line}: {b.reason}" for b in first)
    more = f" (and {rest} more line(s))" if rest else ""
    raise DataError(
        f"{path}: {len(bad)} line(s) cannot be screened ({numbers}): {shown}{more}.",
        f"Fix or remove those lines, or skip them (--skip-bad-lines; skip_bad_lines=True) to screen the rest. {_FORMAT_HELP}",
    )


def _messages_of(obj: Any) -> list[dict[str, str]]:
    """The conversation of one line; ValueError (with the reason) when it has no usable form."""
    if not isinstance(obj, dict):
        raise ValueError(f"a JSON {type(obj).__name__}, not an object")
    if "messages" in obj:
        messages = _message_list(obj["messages"], "messages")
    elif "prompt" in obj and "completion" in obj:
        prompt, completion = obj["prompt"], obj["completion"]
        messages = (
            [{"role": "user", "content": _text(prompt, "prompt")}] if isinstance(prompt, str) else _message_list(prompt, "prompt")
        ) + (
            [{"role": "assistant", "content": _text(completion, "completion")}]
            if isinstance(completion, str) else _message_list(completion, "completion")
        )
    else:
        keys = ", ".join(_clip(repr(k), 40) for k in list(obj)[:6]) or "none"
        raise ValueError(f"unknown format (keys: {keys}; expected 'messages', or 'prompt' and 'completion')")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ValueError("no assistant turn with text")
    return messages


def _message_list(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{where}' is not a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"'{where}' item {i} is not a message with a 'role'")
        out.append({"role": m["role"], "content": _text(m.get("content"), f"'{where}' item {i} content")})
    return out


def _text(content: Any, where: str) -> str:
    """Message content: a string, or a list of parts whose text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type", "text") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    raise ValueError(f"{where} is not text")


# -- token sequences -------------------------------------------------------------------------------


def _context_ids(tokenizer: Any, messages: list[dict[str, str]], n: int) -> tuple[tuple[int, ...], bool]:
    """The last `n` tokens of the conversation before an assistant turn, as the model sees it when
    it starts replying, and whether earlier ones were cut."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) if messages else ""
        ids, cut = _tail_ids(tokenizer, text, n, add_special_tokens=False)
        if ids:
            return ids, cut
    text = "".join(f"{m['content']}\n" for m in messages)
    ids, cut = _tail_ids(tokenizer, text, n, add_special_tokens=True)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return ids or ((int(bos),) if bos is not None else ()), cut


def _head_ids(tokenizer: Any, text: str, n: int) -> tuple[tuple[int, ...], bool]:
    """The first `n` tokens of `text` and whether it has more. Only CHARS_PER_TOKEN x `n`
    characters are tokenised when they already hold more than `n` tokens (a megabyte-long reply
    costs no more than a long one); the token cut at that boundary is never kept."""
    bound = CHARS_PER_TOKEN * n
    if len(text) > bound:
        ids = tuple(tokenizer(text[:bound], add_special_tokens=False)["input_ids"])
        if len(ids) > n:
            return ids[:n], True
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[:n], len(ids) > n


def _tail_ids(tokenizer: Any, text: str, n: int, *, add_special_tokens: bool) -> tuple[tuple[int, ...], bool]:
    """The last `n` tokens of `text` and whether earlier ones were cut (tokenising only its last
    CHARS_PER_TOKEN x `n` characters when they already hold more than `n` tokens)."""
    bound = CHARS_PER_TOKEN * n
    if len(text) > bound:
        ids = tuple(tokenizer(text[-bound:], add_special_tokens=add_special_tokens)["input_ids"])
        if len(ids) > n:
            return ids[-n:], True
    ids = tuple(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    return ids[-n:], len(ids) > n


def turn_sequences(tokenizer: Any, ex_index: int, ex: _Example, max_tokens: int) -> tuple[list[TokenSequence], bool]:
    """One sequence of at most `max_tokens` per assistant turn (context + the turn's tokens), and
    whether any turn or its context was cut to fit; `prompt_index` carries the example's index so
    that tokens of all its turns are pooled."""
    out = []
    cut = False
    for i, m in enumerate(ex.messages):
        if m["role"] != "assistant" or not m["content"].strip():
            continue
        reply, reply_cut = _head_ids(tokenizer, m["content"], max_tokens - 1)
        context, context_cut = _context_ids(tokenizer, ex.messages[:i], max(1, max_tokens - len(reply)))
        cut = cut or reply_cut or context_cut
        if reply:
            out.append(TokenSequence("screen", ex_index, context, reply))
    return out, cut


def _preview(ex: _Example, n: int = 120) -> str:
    first = next(m["content"] for m in ex.messages if m["role"] == "assistant" and m["content"].strip())
    text = " ".join(first.split())
    return text if len(text) <= n else text[: n - 1] + "…"


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
    seqs: list[TokenSequence] = []
    kept: list[_Example] = []
    truncated: set[int] = set()
    template_bad: list[SkippedLine] = []
    for ex in examples:
        try:
            turns, cut = turn_sequences(tok, len(kept), ex, max_tokens)
        except Exception as exc:  # noqa: BLE001 - a chat template may reject any conversation shape
            template_bad.append(SkippedLine(ex.line, f"the base model's chat template rejects it ({type(exc).__name__}: {_clip(str(exc), 200)})"))
            continue
        if not turns:
            template_bad.append(SkippedLine(ex.line, "its assistant turns hold no tokens"))
            continue
        seqs.extend(turns)
        if cut:
            truncated.add(len(kept))
        kept.append(ex)
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
        scored = [c.name for c in setup.concepts if any(setup.usable(c.name, la) for la in layers)]
        if not scored:
            raise ConfigError(
                f"The SAEs have too few latents tied to any of the concepts ({', '.join(setup.names)}) at layer(s) {layers} "
                "to score them.",
                "Use SAEs trained on this base model (shipped for the embedded model, or trained by NeuronLens) and concepts "
                "they can see.",
            )
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
