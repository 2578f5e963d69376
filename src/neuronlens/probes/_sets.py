"""Probe sets: the prompts both models are read on.

Built-in sets live in ``probes/data/<name>.jsonl`` (written for this project); users pass their
own as JSONL (``{"prompt": ...}`` or chat ``{"messages": [...]}``, whose last user turn is the
prompt), CSV (a ``prompt`` column) or TXT (one prompt per line).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import ProbeError

_DATA = "neuronlens.probes.data"


@dataclass(frozen=True)
class ProbeSet:
    name: str
    prompts: tuple[str, ...]
    source: str
    """'builtin' or the file path it was read from."""
    lines: tuple[int, ...] | None = field(default=None, compare=False)
    """Line number in its file of each prompt (None for a set built in code): what an error about
    one prompt names. Not part of the set's identity or digest."""

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON list of prompts (what the models actually read)."""
        return hashlib.sha256(json.dumps(list(self.prompts), ensure_ascii=False).encode()).hexdigest()

    def subset(self, n: int | None) -> ProbeSet:
        """`n` prompts spread evenly over the set (every k-th), so a budgeted audit still sees
        every kind of prompt a set holds, not just the first few."""
        if n is None or n >= len(self.prompts):
            return self
        total = len(self.prompts)
        idx = [int(i * total / n) for i in range(n)]
        lines = None if self.lines is None else tuple(self.lines[i] for i in idx)
        return ProbeSet(self.name, tuple(self.prompts[i] for i in idx), self.source, lines)

    def identity(self) -> dict[str, object]:
        return {"name": self.name, "source": self.source, "n_prompts": len(self.prompts), "sha256": self.digest}


def builtin_names() -> list[str]:
    """Names of the built-in probe sets, read from the package data (never a hand-kept list)."""
    return sorted(p.name.removesuffix(".jsonl") for p in resources.files(_DATA).iterdir() if p.name.endswith(".jsonl"))


def load_probe_set(spec: str | Path, max_prompts: int | None = None) -> ProbeSet:
    """A built-in set by name, or a .jsonl/.csv/.txt file of prompts."""
    spec_s = str(spec)
    if spec_s in builtin_names():
        text = resources.files(_DATA).joinpath(f"{spec_s}.jsonl").read_text(encoding="utf-8")
        return _probe_set(spec_s, _parse_jsonl(text, f"built-in set {spec_s}"), "builtin").subset(max_prompts)
    path = Path(spec_s).expanduser()
    if not path.is_file():
        raise ProbeError(
            f"Probe set {spec_s!r} is neither a built-in set nor an existing file.",
            f"Use one of {', '.join(builtin_names())}, or a path to a .jsonl, .csv or .txt file of prompts.",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProbeError(f"Probe file {path} cannot be read as UTF-8 text: {exc}.", "Save it as UTF-8.") from exc
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        prompts = _parse_jsonl(text, str(path))
    elif suffix == ".csv":
        prompts = _parse_csv(text, str(path))
    elif suffix == ".txt":
        prompts = [(lineno, line.strip()) for lineno, line in enumerate(text.splitlines(), start=1) if line.strip()]
    else:
        raise ProbeError(f"Probe file {path} has an unknown extension {suffix!r}.", "Use .jsonl, .csv or .txt.")
    if not prompts:
        raise ProbeError(f"Probe file {path} holds no prompts.", "Add at least two prompts (one per line).")
    return _probe_set(path.stem, prompts, str(path)).subset(max_prompts)


def _probe_set(name: str, numbered: list[tuple[int, str]], source: str) -> ProbeSet:
    """A set from (line number, prompt) pairs."""
    return ProbeSet(name, tuple(p for _, p in numbered), source, tuple(n for n, _ in numbered))


def _parse_jsonl(text: str, where: str) -> list[tuple[int, str]]:
    """(line number, prompt) of every non-blank line."""
    prompts: list[tuple[int, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeError(f"{where}, line {lineno}: not valid JSON ({exc.msg}).", "Each line must be one JSON object.") from exc
        prompt = _prompt_of(obj)
        if prompt is None:
            raise ProbeError(
                f"{where}, line {lineno}: no prompt found.",
                'Write {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]} per line.',
            )
        prompts.append((lineno, prompt))
    return prompts


def _prompt_of(obj: object) -> str | None:
    if not isinstance(obj, dict):
        return None
    for key in ("prompt", "question", "text"):
        if isinstance(obj.get(key), str) and obj[key].strip():
            return obj[key].strip()
    messages = obj.get("messages")
    if isinstance(messages, list):
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str) and users[-1].strip():
            return users[-1].strip()
    return None


def _parse_csv(text: str, where: str) -> list[tuple[int, str]]:
    """(first line number, prompt) of the `prompt` column of a CSV; bad rows and broken quoting
    are named by line number."""
    rows = _csv_rows(text, where)
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0][1]]
    col = header.index("prompt") if "prompt" in header else None
    if col is None:
        raise ProbeError(f"{where}: the CSV has no 'prompt' column (header: {rows[0][1]}).", "Name the prompts column 'prompt'.")
    prompts = []
    for lineno, row in rows[1:]:
        if len(row) <= col:
            raise ProbeError(f"{where}, line {lineno}: missing the prompt column.", "Give every row a prompt.")
        if row[col].strip():
            prompts.append((lineno, row[col].strip()))
        elif any(cell.strip() for cell in row):  # a row of only commas (a spreadsheet's blank row) holds nothing
            raise ProbeError(f"{where}, line {lineno}: the prompt is empty (the row has other fields).",
                             "Write the prompt in that row, or remove the row.")
    return prompts


def _csv_rows(text: str, where: str) -> list[tuple[int, list[str]]]:
    """(first line number, fields) of each CSV row, read strictly: a lenient reader lets one
    unclosed quote swallow every later line into a single prompt, so the set silently shrinks."""
    reader = csv.reader(text.splitlines(), strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _csv_error(where, start, exc) from exc
    return rows


def _csv_error(where: str, lineno: int, exc: csv.Error) -> ProbeError:
    """A ProbeError for malformed CSV quoting at the row that starts on `lineno`."""
    fix = 'Put a closing " at the end of the quoted field, and write a quote inside a quoted field as "" (e.g. "say ""hi""").'
    if "unexpected end of data" in str(exc):
        return ProbeError(f"{where}, line {lineno}: a quoted field opens here and is never closed (a \" is missing).", fix)
    return ProbeError(f"{where}, line {lineno}: malformed CSV quoting ({exc}).", fix)
