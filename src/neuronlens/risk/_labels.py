"""Feature labels and where they came from.

Three sources, most trusted first: labels the user imports (Neuronpedia explanations as
``.json``, or as a bulk export ``.jsonl`` / ``.jsonl.gz``, or a CSV ``layer,latent,label``), the concept a latent is tied to on the base model
(``concept:<name> (AUROC a)``), and an automatic label from the tokens it fires on most in the
audit's probe texts (``auto:top-tokens``). Every label carries its source.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._io import read_user_text
from ..config import is_int
from ..errors import ConfigError

_LAYER = re.compile(r"^(\d+)(?![\d.])")
_INTEGER = re.compile(r"^[+-]?\d+$")
_JSON_FIX = 'Give each explanation a layer ("12-res-jb" or 12), an integer index and a description: [{"layer": "12-res", "index": 5, "description": "..."}].'
_KINDS = "Neuronpedia explanations (.json, or a bulk export .jsonl / .jsonl.gz) or a layer,latent,label .csv"
_CSV_FIX = "Give every row three fields, layer,latent,label: integers and a non-empty label (quote a label that contains a comma)."


@dataclass(frozen=True)
class LabelRow:
    """One imported label and where in its file it came from (for error messages)."""

    layer: int
    latent: int
    label: str
    where: str
    """E.g. "labels.csv, line 3" or "np.json, explanation 2"."""
    layer_id: str | None = None
    """A Neuronpedia layer id ("8-res-jb"): its number is the block of the SAE's hook, not a NeuronLens layer."""


def load_label_file(
    path: str | Path, d_sae: dict[int, int], *, n_layers: int, hooks: Mapping[int, str] | None = None
) -> dict[tuple[int, int], tuple[str, str]]:
    """{(layer, latent): (label, source)} from Neuronpedia explanations (a JSON list, or JSONL /
    JSONL.gz bulk exports; ``layer`` like "12-res-jb" or 12, ``index``, ``description``) or a CSV
    ``layer,latent,label``.

    A Neuronpedia layer id ("8-res-jb") names the block of the SAE's hook, so with `hooks` (audited
    layer -> its SAE's hook) it is mapped by hook: ``blocks.8.hook_resid_pre`` reads the input of
    block 8, which is NeuronLens layer 7. A plain integer layer is a NeuronLens layer.

    `d_sae` maps each audited layer to its SAE's width; `n_layers` is the model's layer count.
    A label for a layer outside the model (not in 0..n_layers-1) is an error: the file was made for
    another model. A label for a layer of the model that is not audited is ignored (a file covering
    every layer is normal, and only some are audited). A latent index outside the layer's SAE is an
    error. Errors name the file and the row or explanation."""
    p = Path(path)
    out: dict[tuple[int, int], tuple[str, str]] = {}
    for row in read_label_file(p, n_layers=n_layers):
        row = _by_hook(row, hooks) if hooks is not None and row.layer_id is not None else row
        if row is None or row.layer not in d_sae:
            continue
        if not row.latent < d_sae[row.layer]:
            raise ConfigError(
                f"{row.where}: latent {row.latent} of layer {row.layer} is out of range: that SAE has {d_sae[row.layer]} "
                f"latents (0..{d_sae[row.layer] - 1}).",
                "Use labels made for these SAEs, or audit with the SAEs the labels were made for.",
            )
        out[(row.layer, row.latent)] = (row.label, f"imported:{p.name}")
    return out


def read_label_file(path: str | Path, *, n_layers: int | None = None) -> list[LabelRow]:
    """Every row of a label file, parsed and checked without the SAEs: integers where integers
    belong, a non-empty label, a non-negative latent and (when `n_layers` is given) a layer of the
    model. Cheap, so an audit runs it before SAEs are loaded or trained (see `check_label_files`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Label file {p} does not exist.", f"Pass {_KINDS}.")
    kind = next((k for k in (".jsonl.gz", ".jsonl", ".json", ".csv") if p.name.lower().endswith(k)), None)
    if kind is None:
        raise ConfigError(f"Label file {p} is neither a .json nor a .csv file (nor a .jsonl or .jsonl.gz export).",
                          f"Pass {_KINDS} (rename the file if it is one of those).")
    text = _gunzip_text(p) if kind == ".jsonl.gz" else read_user_text(p, "Label file")
    rows = _csv_rows(p, text) if kind == ".csv" else _json_rows(p, text) if kind == ".json" else _jsonl_rows(p, text)
    for row in rows:
        _check_row(row, n_layers)
    return rows


def check_label_files(files: Sequence[str | Path], n_layers: int) -> None:
    """Parse every label file and check its layers against the model, raising a ConfigError on the
    first problem: run before any long work so that a bad label file fails in seconds."""
    for f in files:
        read_label_file(f, n_layers=n_layers)


def _check_row(row: LabelRow, n_layers: int | None) -> None:
    """The checks that need no SAE: a non-negative latent, a layer inside the model."""
    if row.latent < 0:
        raise ConfigError(f"{row.where}: latent {row.latent} is negative.", "Latent indices start at 0.")
    if row.layer < 0 or (n_layers is not None and row.layer >= n_layers):
        model = f"which has {n_layers} layers (0..{n_layers - 1})" if n_layers is not None else "whose layers start at 0"
        raise ConfigError(
            f"{row.where}: layer {row.layer} is not a layer of the model, {model}.",
            "Use labels made for this model, or remove the rows for other layers.",
        )


def _csv_rows(p: Path, text: str) -> list[LabelRow]:
    """Rows of a ``layer,latent,label`` CSV, each named by its line number."""
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or not {"layer", "latent", "label"} <= {f.strip() for f in reader.fieldnames}:
        raise ConfigError(f"{p}: the CSV header must be layer,latent,label (got {reader.fieldnames}).", "Fix the header.")
    reader.fieldnames = [f.strip() for f in reader.fieldnames]
    rows: list[LabelRow] = []
    for r in reader:
        where = f"{p}, line {reader.line_num}"
        if None in r:
            raise ConfigError(f"{where}: the row has more fields than the header ({len(reader.fieldnames) + len(r[None])}).", _CSV_FIX)
        missing = [k for k in ("layer", "latent", "label") if r[k] is None]
        if missing:
            raise ConfigError(f"{where}: the row has no {' or '.join(missing)}.", _CSV_FIX)
        label = r["label"].strip()
        if not label:
            raise ConfigError(f"{where}: the label is empty.", _CSV_FIX)
        rows.append(LabelRow(_integer(r["layer"], where, "layer", _CSV_FIX), _integer(r["latent"], where, "latent", _CSV_FIX), label, where))
    return rows


def _json_rows(p: Path, text: str) -> list[LabelRow]:
    """Rows of a Neuronpedia-style explanations JSON, each named by its position (from 1)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p} is not valid JSON ({exc.msg}, line {exc.lineno}).", "Fix the JSON.") from exc
    items = data.get("explanations", data) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ConfigError(f"{p}: expected a list of explanations (or {{\"explanations\": [...]}}).", _JSON_FIX)
    return [_explanation(e, f"{p}, explanation {i}") for i, e in enumerate(items, start=1)]


def _jsonl_rows(p: Path, text: str) -> list[LabelRow]:
    """Rows of a Neuronpedia bulk export: one explanation object per line, named by line number."""
    rows: list[LabelRow] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}, line {n} is not valid JSON ({exc.msg}).", "Fix or remove the line.") from exc
        rows.append(_explanation(e, f"{p}, line {n}"))
    return rows


def _gunzip_text(p: Path) -> str:
    try:
        with gzip.open(p, "rb") as f:
            return f.read().decode("utf-8-sig")
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"Label file {p} is not a readable gzip file ({exc}).", "Re-download the export.") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Label file {p} does not hold UTF-8 text (byte {exc.start}).", "Re-download the export.") from exc


def _explanation(e: Any, where: str) -> LabelRow:
    """One Neuronpedia explanation object as a row; a ConfigError naming `where` otherwise."""
    if not isinstance(e, dict):
        raise ConfigError(f"{where} is {json.dumps(e, default=str)[:60]}, not an object.", _JSON_FIX)
    missing = [k for k in ("layer", "index", "description") if k not in e]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}.", _JSON_FIX)
    description = e["description"]
    if not isinstance(description, str) or not description.strip():
        raise ConfigError(f"{where}: description {json.dumps(description, default=str)[:60]} is not a non-empty string.", _JSON_FIX)
    layer_id = e["layer"].strip() if isinstance(e["layer"], str) and not _INTEGER.match(e["layer"].strip()) else None
    return LabelRow(_json_layer(e["layer"], where), _integer(e["index"], where, "index", _JSON_FIX), description.strip(), where, layer_id)


def _hook_block(layer: int, hook: str) -> int:
    """The block number in the hook of the SAE audited at `layer`: NeuronLens layer L is the output
    of block L (blocks.L.hook_resid_post, sparsify layers.L), the input of block L+1 (blocks.L+1.hook_resid_pre)."""
    return layer + 1 if hook.endswith("hook_resid_pre") else layer


def _by_hook(row: LabelRow, hooks: Mapping[int, str]) -> LabelRow | None:
    """`row` keyed by the audited layer whose SAE's hook is in the block its Neuronpedia layer id
    names (None when no audited SAE reads that block)."""
    readers = sorted(layer for layer, hook in hooks.items() if _hook_block(layer, hook) == row.layer)
    if len(readers) > 1:
        raise ConfigError(
            f"{row.where}: Neuronpedia layer {row.layer_id!r} names block {row.layer}, whose hooks the SAEs of layers "
            f"{readers} both read ({', '.join(hooks[r] for r in readers)}), so which SAE it labels is ambiguous.",
            "Audit only one of those layers, or give the labels as a CSV layer,latent,label by NeuronLens layer.",
        )
    return LabelRow(readers[0], row.latent, row.label, row.where, row.layer_id) if readers else None


def _json_layer(value: Any, where: str) -> int:
    """A Neuronpedia layer id ("12-res-jb": the number before the first dash) or a plain integer."""
    if isinstance(value, str):
        m = _LAYER.match(value.strip())
        if m is None:
            raise ConfigError(f"{where}: layer {value!r} does not start with a layer number (like \"12-res-jb\").", _JSON_FIX)
        return int(m.group(1))
    return _integer(value, where, "layer", _JSON_FIX)


def _integer(value: Any, where: str, field_name: str, fix: str) -> int:
    """`value` as an int: a JSON integer or a string of digits. Anything else (5.7, "abc", null,
    true) is refused rather than truncated or guessed, since it would label the wrong latent."""
    if is_int(value):
        return int(value)
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        return int(value.strip())
    raise ConfigError(f"{where}: {field_name} {json.dumps(value, default=str)} is not an integer.", fix)


def top_tokens(evidence: Any, read: str, layer: int, latent: int, tokenizer: Any, n: int = 5, min_count: int = 3) -> list[str]:
    """The tokens `latent` is most specific to in the audit's probe texts: highest mean activation
    per occurrence (over every occurrence of the token, firing or not, so frequent function words
    do not win by volume), among tokens seen at least `min_count` times."""
    total: Counter[int] = Counter()
    count: Counter[int] = Counter()
    for rec in evidence.records.get((read, layer), []):
        for codes in (rec.base, rec.ft):
            if codes is None:
                continue
            col = codes.index_select(1, torch.tensor([latent])).to_dense().squeeze(1)
            for tid, v in zip(rec.token_ids, col.tolist()):
                count[tid] += 1
                total[tid] += v
    scored = sorted((total[t] / c, t) for t, c in count.items() if c >= min_count and total[t] > 0)
    if tokenizer is None:
        return []
    return [tokenizer.decode([t]).strip() or repr(tokenizer.decode([t])) for _, t in reversed(scored[-n:])]


def merge_imported(
    files: Sequence[str | Path], d_sae: dict[int, int], *, n_layers: int, hooks: Mapping[int, str] | None = None
) -> dict[tuple[int, int], tuple[str, str]]:
    """The labels of every file, later files overriding earlier ones (see :func:`load_label_file`)."""
    out: dict[tuple[int, int], tuple[str, str]] = {}
    for f in files:
        out.update(load_label_file(f, d_sae, n_layers=n_layers, hooks=hooks))
    return out
