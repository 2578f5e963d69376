"""The risk concept library: contrastive sets of assistant replies that do / do not express a
concept, matched pair by pair (same prompt, similar length and style).

Shipped concepts live in ``concepts/builtin/<name>.json`` (staged ones, not loaded by default, in
``concepts/staged/``); users add their own files in the same format. ``polarity`` is 'harmful'
(the concept rising is the risk) or 'protective' (its suppression is the risk, e.g. safety caveats).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .._io import read_user_text
from ..errors import ConfigError

MIN_PAIRS = 40
POLARITIES = ("harmful", "protective")
_DATA = "neuronlens.concepts.builtin"
_STAGED = "neuronlens.concepts.staged"


@dataclass(frozen=True)
class ConceptPair:
    prompt: str
    positive: str
    negative: str


@dataclass(frozen=True)
class Concept:
    name: str
    label: str
    polarity: str
    description: str
    pairs: tuple[ConceptPair, ...]
    source: str

    @property
    def risk_sign(self) -> float:
        """+1 for a harmful concept, -1 for a protective one: the sign that turns a move of the
        concept's coordinate into a move towards risk (a protective concept's risk is its fall)."""
        return 1.0 if self.polarity == "harmful" else -1.0

    @property
    def digest(self) -> str:
        body = [[p.prompt, p.positive, p.negative] for p in self.pairs]
        return hashlib.sha256(json.dumps([self.name, self.polarity, body], ensure_ascii=False).encode()).hexdigest()


def builtin_concept_names() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in resources.files(_DATA).iterdir() if p.name.endswith(".json"))


def staged_concept_paths() -> list[Path]:
    """The staged concept files: written, not loaded by default (concepts/staged/README.md says
    why); pass them as paths, e.g. ``load_concepts([str(p) for p in staged_concept_paths()])``."""
    return sorted(Path(str(p)) for p in resources.files(_STAGED).iterdir() if p.name.endswith(".json"))


def load_concepts_with_staged() -> list[Concept]:
    """The built-in concepts, then the staged ones."""
    return load_concepts() + load_concepts([str(p) for p in staged_concept_paths()])


def load_concept(spec: str | Path) -> Concept:
    """A shipped concept by name, or a concept JSON file."""
    spec_s = str(spec)
    if spec_s in builtin_concept_names():
        text = resources.files(_DATA).joinpath(f"{spec_s}.json").read_text(encoding="utf-8")
        return parse_concept(text, f"built-in concept {spec_s}", "builtin")
    path = Path(spec_s).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"Concept {spec_s!r} is neither a built-in concept nor an existing file.",
            f"Use one of {', '.join(builtin_concept_names())}, or a path to a concept .json file.",
        )
    return parse_concept(read_user_text(path, "Concept file"), str(path), str(path))


def load_concepts(specs: list[str] | None = None) -> list[Concept]:
    return [load_concept(s) for s in (specs if specs is not None else builtin_concept_names())]


def parse_concept(text: str, where: str, source: str) -> Concept:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc.msg} (line {exc.lineno}).", "Fix the JSON syntax.") from exc
    fix = (
        'A concept file is {"name", "label", "polarity": "harmful"|"protective", "description", '
        f'"pairs": [{{"prompt", "positive", "negative"}}, ...]}} with at least {MIN_PAIRS} pairs.'
    )
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} is not a JSON object.", fix)
    missing = [k for k in ("name", "label", "polarity", "pairs") if k not in obj]
    if missing:
        raise ConfigError(f"{where} lacks {missing}.", fix)
    for key in ("name", "label"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise ConfigError(f"{where}: {key} {obj[key]!r} is not a non-empty string.", fix)
    if obj["polarity"] not in POLARITIES:
        raise ConfigError(f"{where}: polarity {obj['polarity']!r} is not 'harmful' or 'protective'.", fix)
    pairs = obj["pairs"]
    if not isinstance(pairs, list):
        raise ConfigError(f"{where}: 'pairs' is not a list.", fix)
    out: list[ConceptPair] = []
    for i, p in enumerate(pairs):
        if not isinstance(p, dict) or not all(isinstance(p.get(k), str) and p[k].strip() for k in ("prompt", "positive", "negative")):
            raise ConfigError(
                f"{where}: pair {i} is not matched (it needs a non-empty prompt, positive and negative).", fix
            )
        if p["positive"].strip() == p["negative"].strip():
            raise ConfigError(f"{where}: pair {i} has identical positive and negative replies.", "Make the pair differ in the concept.")
        out.append(ConceptPair(p["prompt"].strip(), p["positive"].strip(), p["negative"].strip()))
    _check_distinct_prompts(out, where)
    if len(out) < MIN_PAIRS:
        raise ConfigError(
            f"{where} has {len(out)} matched pairs; at least {MIN_PAIRS} are needed for a stable association.",
            f"Add pairs until there are {MIN_PAIRS} or more.",
        )
    return Concept(obj["name"].strip(), obj["label"].strip(), obj["polarity"], str(obj.get("description", "")), tuple(out), source)


def _normalized(text: str) -> str:
    """`text` with case and runs of whitespace ignored: two prompts that differ only so are one."""
    return " ".join(text.split()).casefold()


def _check_distinct_prompts(pairs: list[ConceptPair], where: str) -> None:
    """Each pair must have a prompt of its own. The association treats every pair as an independent
    situation in which the concept is or is not expressed, and MIN_PAIRS is the number of such
    situations it needs to be stable; pairs repeating one prompt (or an exact duplicate pair) count
    one situation several times and would let a concept built from a single prompt pass."""
    first: dict[str, int] = {}
    for i, pair in enumerate(pairs):
        j = first.setdefault(_normalized(pair.prompt), i)
        if j != i:
            raise ConfigError(
                f"{where}: pair {i} repeats the prompt of pair {j} ({pair.prompt[:60]!r}); each pair needs its own "
                f"prompt so that the {MIN_PAIRS} pairs measure the concept in {MIN_PAIRS} different situations.",
                "Give every pair a different prompt (for more replies to the same question, rephrase the question), "
                "or remove the repeated pair.",
            )
