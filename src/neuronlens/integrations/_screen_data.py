"""Reading a fine-tuning data file for the screen: its JSONL lines parsed into conversations
(:func:`read_examples`), bad lines reported by number (or skipped), and a file in a whole-file
format (one JSON array or object, pretty-printed JSON, CSV/TSV, Parquet) refused as such with
the one-liner that converts it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import read_user_text
from ..errors import DataError

_SHOWN_BAD_LINES = 10
_WHITESPACE = re.compile(r"\s*")
_HEADER_CELL = re.compile(r"[\w .\-\"']{1,64}")
"""A CSV header cell: a short column name."""
_FORMAT_HELP = (
    'The screener reads chat JSONL: each line must be one JSON object, {"messages": [{"role": "user", "content": "..."}, '
    '{"role": "assistant", "content": "..."}]} or {"prompt": "...", "completion": "..."}.'
)


@dataclass(frozen=True)
class SkippedLine:
    line: int
    reason: str


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
