"""Feature labels and where they came from.

Three sources, most trusted first: labels the user imports (a Neuronpedia-style explanations
JSON, or a CSV ``layer,latent,label``), the concept a latent is tied to on the base model
(``concept:<name> (AUROC a)``), and an automatic label from the tokens it fires on most in the
audit's probe texts (``auto:top-tokens``). Every label carries its source.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

_LAYER = re.compile(r"^(\d+)")


def load_label_file(path: str | Path, d_sae: dict[int, int]) -> dict[tuple[int, int], tuple[str, str]]:
    """{(layer, latent): (label, source)} from a Neuronpedia-style JSON list of explanations
    (``layer`` like "12-res-jb" or 12, ``index``, ``description``) or a CSV ``layer,latent,label``.
    Labels for layers that are not audited are ignored; a latent index outside the SAE is an error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Label file {p} does not exist.", "Pass a Neuronpedia explanations .json or a layer,latent,label .csv.")
    source = f"imported:{p.name}"
    rows: list[tuple[int, int, str]] = []
    if p.suffix.lower() == ".csv":
        reader = csv.DictReader(p.read_text(encoding="utf-8").splitlines())
        if not reader.fieldnames or not {"layer", "latent", "label"} <= {f.strip() for f in reader.fieldnames}:
            raise ConfigError(f"{p}: the CSV header must be layer,latent,label (got {reader.fieldnames}).", "Fix the header.")
        for i, r in enumerate(reader, start=2):
            try:
                rows.append((int(r["layer"]), int(r["latent"]), r["label"].strip()))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{p}, line {i}: layer and latent must be integers.", "Fix that row.") from exc
    else:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p} is not valid JSON ({exc.msg}, line {exc.lineno}).", "Fix the JSON.") from exc
        items = data.get("explanations", data) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ConfigError(f"{p}: expected a list of explanations.", 'Use [{"layer": "12-res", "index": 5, "description": "..."}].')
        for i, e in enumerate(items):
            m = _LAYER.match(str(e.get("layer", ""))) if isinstance(e, dict) else None
            if m is None or "index" not in e or not str(e.get("description", "")).strip():
                raise ConfigError(f"{p}: explanation {i} lacks layer, index or description.", "Give each one all three.")
            rows.append((int(m.group(1)), int(e["index"]), str(e["description"]).strip()))
    out: dict[tuple[int, int], tuple[str, str]] = {}
    for layer, latent, label in rows:
        if layer not in d_sae:
            continue
        if not 0 <= latent < d_sae[layer]:
            raise ConfigError(
                f"{p} labels latent {latent} of layer {layer}, but that SAE has {d_sae[layer]} latents (0..{d_sae[layer] - 1}).",
                "Use labels made for these SAEs.",
            )
        out[(layer, latent)] = (label, source)
    return out


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


def merge_imported(files: Sequence[str | Path], d_sae: dict[int, int]) -> dict[tuple[int, int], tuple[str, str]]:
    out: dict[tuple[int, int], tuple[str, str]] = {}
    for f in files:
        out.update(load_label_file(f, d_sae))
    return out
