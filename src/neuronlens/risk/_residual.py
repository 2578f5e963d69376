"""Concept directions in the raw residual stream, beside the SAE-latent ones (issue #18 part 3).

For every matched pair of a concept the base model reads prompt + reply, as the SAE association
step does, and each reply's residual is averaged over its tokens (position 0 and
massive-activation positions left out, as everywhere in the audit). A concept's direction is the
difference of means, positive replies minus negative replies; it is scaled like an SAE concept
coordinate: projecting the base model's mean negative reply gives 0 and its mean positive reply 1
(persona vectors, Chen et al. 2025, arXiv 2507.21509).

The *general* direction, "unsafe minus safe assistant reply", is the same difference over the
union of all concepts' pairs, each pair oriented towards risk: a harmful concept's positive reply
is the unsafe side, a protective concept's (safety caveats) is the safe side. Since a fine-tune's
harm may be of a kind no concept holds, the general direction is also built leave-one-concept-out
(``general-without-<concept>``) to check that it generalises to a kind it was not built from.

    dirs = residual_directions(load_model("smollm2-135m-instruct"), [9, 15, 21])
    coords = dirs.project(15, resid)          # [n_tokens, n_directions], 0/1 units

Everything is built from float64 sums that merge by addition (:class:`DirectionSums`); the
per-reply means are cached per (base model, concept, layer), so a changed or added concept re-reads
only itself, and the result records the library digest it was built from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from .._cache import cache_root, discard_entry, key_digest, read_tensor_file, write_tensor_file
from .._progress import progress
from ..capture import TokenSequence, gather, make_batches, massive_keep, run_to_layers
from ..concepts import Concept, load_concept, load_concepts, pair_sequences
from ..errors import ConfigError

RESIDUAL_FORMAT = 1
GENERAL = "general"
GENERAL_LABEL = "Unsafe vs safe assistant reply"
LOCO_PREFIX = "general-without-"


def loco_name(concept: str) -> str:
    """The name of the general direction built without `concept`'s pairs."""
    return f"{LOCO_PREFIX}{concept}"


# -- reading ---------------------------------------------------------------------------------------


@torch.inference_mode()
def mean_residuals(
    model: torch.nn.Module, seqs: Sequence[TokenSequence], layers: Sequence[int], pad_id: int, *,
    positions: str = "response", token_budget: int = 4096, massive_factor: float = 10.0,
    on_batch: Callable[[int], None] | None = None, name: str | None = None,
) -> dict[int, np.ndarray]:
    """layer -> [n_seqs, d_model] float64: each sequence's mean residual over its measured tokens
    (`positions`; position 0 never, massive-activation tokens left out by ``capture.massive_keep``
    within each batch, as the audit does). A sequence with no measured token is a NaN row.

    A direction's coordinate is affine in the residual, so the mean of a sequence's per-token
    coordinates equals the coordinate of this mean: ``ResidualDirections.project(layer, means)``."""
    device = next(model.parameters()).device
    index = {id(s): i for i, s in enumerate(seqs)}
    out: dict[int, np.ndarray] = {}
    for batch in make_batches(seqs, positions, token_budget, pad_id):
        resid = run_to_layers(model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
        for layer in layers:
            x = gather(resid[layer], batch, layer=layer, model=name)
            keep = massive_keep(x, massive_factor)
            rows = out.setdefault(layer, np.full((len(seqs), x.shape[1]), np.nan))
            for r, seq in enumerate(batch.sequences):
                sel = (batch.row == r) & keep
                if bool(sel.any()):
                    rows[index[id(seq)]] = x[sel].double().mean(0).numpy()
        if on_batch is not None:
            on_batch(len(batch.sequences))
    return out


@dataclass(frozen=True)
class ConceptReads:
    """One concept at one layer: the base model's mean residual over each reply (float64)."""

    concept: str
    layer: int
    positive: np.ndarray
    """[n_pairs, d_model]: row i is pair i's positive reply."""
    negative: np.ndarray
    """[n_pairs, d_model]: row i is pair i's negative reply."""

    @property
    def n_pairs(self) -> int:
        return int(self.positive.shape[0])


def concept_reads(
    handle: Any, concepts: Sequence[Concept], layers: Sequence[int], *, massive_factor: float = 10.0,
    token_budget: int = 4096, on_batch: Callable[[int], None] | None = None,
) -> dict[tuple[str, int], ConceptReads]:
    """(concept, layer) -> :class:`ConceptReads` on `handle`'s base model, cached by (model digest,
    concept digest, layer, massive factor); the model loads only if something must be read."""
    out: dict[tuple[str, int], ConceptReads] = {}
    for c in concepts:
        cached = {layer: _load_cached(handle.digest, c, layer, massive_factor) for layer in layers}
        if all(v is not None for v in cached.values()):
            out.update({(c.name, layer): v for layer, v in cached.items() if v is not None})
            if on_batch is not None:
                on_batch(2 * len(c.pairs))
            continue
        seqs, labels = pair_sequences(handle.tokenizer, c)
        means = mean_residuals(
            handle.model, seqs, layers, handle.tokenizer.pad_token_id or 0, token_budget=token_budget,
            massive_factor=massive_factor, on_batch=on_batch,
        )
        for layer in layers:
            reads = _reads_of(c, layer, means[layer], labels)
            _store_cached(handle.digest, c, layer, massive_factor, reads)
            out[(c.name, layer)] = reads
    return out


def _reads_of(concept: Concept, layer: int, means: np.ndarray, labels: np.ndarray) -> ConceptReads:
    """Split `means` (pair order, positive then negative, as ``concepts.pair_sequences`` makes them)."""
    empty = np.flatnonzero(np.isnan(means).any(1))
    if empty.size:
        i = int(empty[0])
        side = "positive" if labels[i] == 1 else "negative"
        raise ConfigError(
            f"Concept {concept.name!r}: the {side} reply of pair {i // 2} has no measurable token at layer {layer} "
            "(every token was left out as a massive activation).",
            "Give the reply more words, or remove the pair.",
        )
    return ConceptReads(concept.name, layer, means[labels == 1], means[labels == 0])


def _cache_key(model_digest: str, concept: Concept, layer: int, massive_factor: float) -> dict[str, Any]:
    return {"model": model_digest, "concept": concept.digest, "layer": layer, "massive_factor": float(massive_factor),
            "format": RESIDUAL_FORMAT}


def cache_path(model_digest: str, concept: Concept, layer: int, massive_factor: float = 10.0) -> Path:
    """Where `concept`'s reads at `layer` on the model of `model_digest` are cached."""
    key = _cache_key(model_digest, concept, layer, massive_factor)
    return cache_root() / "residual_concepts" / f"{concept.name}-L{layer}-{key_digest(key)[:20]}.safetensors"


def _load_cached(model_digest: str, concept: Concept, layer: int, massive_factor: float) -> ConceptReads | None:
    path = cache_path(model_digest, concept, layer, massive_factor)
    if not path.is_file():
        return None
    t = read_tensor_file(path, _cache_key(model_digest, concept, layer, massive_factor))
    if t is None or t["positive"].shape[0] != len(concept.pairs):
        discard_entry(path)
        return None
    return ConceptReads(concept.name, layer, t["positive"].numpy(), t["negative"].numpy())


def _store_cached(model_digest: str, concept: Concept, layer: int, massive_factor: float, reads: ConceptReads) -> None:
    tensors = {k: torch.from_numpy(np.ascontiguousarray(getattr(reads, k), dtype=np.float64)) for k in ("positive", "negative")}
    write_tensor_file(cache_path(model_digest, concept, layer, massive_factor), _cache_key(model_digest, concept, layer, massive_factor), tensors)


def library_digest(concepts: Sequence[Concept]) -> str:
    """sha256 over the concepts' names and digests, in name order: what a set of directions was built from."""
    body = sorted((c.name, c.digest) for c in concepts)
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()


# -- sums ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectionSums:
    """Float64 sums of per-reply mean residuals on the two sides of a direction. Sums of disjoint
    sets of replies merge by addition (``a + b``)."""

    pos_sum: np.ndarray
    neg_sum: np.ndarray
    n_pos: int
    n_neg: int

    @classmethod
    def of(cls, positive: np.ndarray, negative: np.ndarray) -> DirectionSums:
        pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
        return cls(pos.sum(0), neg.sum(0), int(pos.shape[0]), int(neg.shape[0]))

    def __add__(self, other: DirectionSums) -> DirectionSums:
        return DirectionSums(self.pos_sum + other.pos_sum, self.neg_sum + other.neg_sum, self.n_pos + other.n_pos, self.n_neg + other.n_neg)

    @property
    def pos_mean(self) -> np.ndarray:
        return self.pos_sum / self.n_pos

    @property
    def neg_mean(self) -> np.ndarray:
        return self.neg_sum / self.n_neg

    def scaled(self) -> tuple[np.ndarray, float]:
        """(weights w / (w . w), origin) for w = pos_mean - neg_mean: ``x @ weights - origin`` is 0 at
        the negative mean and 1 at the positive mean."""
        if self.n_pos == 0 or self.n_neg == 0:
            raise ConfigError("A residual direction needs replies on both sides.", "Give every concept at least one pair.")
        w = self.pos_mean - self.neg_mean
        gap = float(w @ w)
        if not gap > 0:
            raise ConfigError("A concept's positive and negative replies have the same mean residual.",
                              "Check that the concept's pairs differ in the concept.")
        weights = w / gap
        return weights, float(self.neg_mean @ weights)


def concept_sums(reads: ConceptReads, pairs: Sequence[int] | None = None) -> DirectionSums:
    """The concept's own sums (positive minus negative), over `pairs` (default: all)."""
    ix = np.arange(reads.n_pairs) if pairs is None else np.asarray(pairs, dtype=np.int64)
    return DirectionSums.of(reads.positive[ix], reads.negative[ix])


def unsafe_sums(reads: ConceptReads, risk_sign: float, pairs: Sequence[int] | None = None) -> DirectionSums:
    """The concept's pairs oriented towards risk (unsafe minus safe): a protective concept's
    (risk_sign -1) negative reply is the unsafe side."""
    s = concept_sums(reads, pairs)
    return s if risk_sign > 0 else DirectionSums(s.neg_sum, s.pos_sum, s.n_neg, s.n_pos)


def general_sums(
    reads: Mapping[tuple[str, int], ConceptReads], concepts: Sequence[Concept], layer: int, *,
    pairs: Mapping[str, Sequence[int]] | None = None, exclude: Collection[str] = (),
) -> DirectionSums:
    """Unsafe-minus-safe sums over the union of the concepts' pairs (in `concepts` order), without
    the concepts named in `exclude`; `pairs`: the pairs of each concept to use (default all)."""
    parts = [unsafe_sums(reads[(c.name, layer)], c.risk_sign, None if pairs is None else pairs[c.name])
             for c in concepts if c.name not in exclude]
    if not parts:
        raise ConfigError("The general direction needs at least one concept it is not left out of.",
                          "Build it from two or more concepts.")
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


# -- result ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResidualDirection:
    """One residual direction (the same at every layer of its :class:`ResidualDirections`)."""

    name: str
    """The concept's name, ``general``, or ``general-without-<concept>``."""
    label: str
    kind: str
    """'concept', 'general' or 'general_loco'."""
    risk_sign: float
    """+1: a rise of the coordinate is a move towards risk; -1 (a protective concept): a fall is.
    The general directions point towards risk, so theirs is +1."""
    concepts: tuple[str, ...]
    """The concepts whose pairs built it."""


@dataclass(frozen=True)
class ResidualDirections:
    """Residual concept directions of one base model at some layers, in 0/1 concept units.

    For the pipeline: ``project(layer, resid)`` turns the measured tokens' residuals [n, d_model]
    into coordinates [n, n_directions] (column k is ``directions[k]``, named ``names[k]``, with
    ``risk_signs[k]``), accumulated like SAE concept coordinates; shifts are fine-tuned minus base,
    so the 0 of the scale cancels. ``digest`` identifies the directions for a report or for
    checking that data-parallel ranks hold the same ones."""

    base_digest: str
    library_digest: str
    layers: tuple[int, ...]
    directions: tuple[ResidualDirection, ...]
    weights: Mapping[int, torch.Tensor]
    """layer -> [d_model, n_directions] float64: each direction w / (w . w). Read-only by contract."""
    origins: Mapping[int, torch.Tensor]
    """layer -> [n_directions] float64: the coordinate ``x @ weights`` of the base model's mean
    negative reply (the 0 of each scale)."""
    massive_factor: float = 10.0

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.directions]

    @property
    def risk_signs(self) -> torch.Tensor:
        return torch.tensor([d.risk_sign for d in self.directions], dtype=torch.float64)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def project(self, layer: int, resid: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[n_tokens, n_directions] float64 coordinates of `resid` [n_tokens, d_model] (0: the
        base model's mean negative reply of the direction's pairs; 1: its mean positive reply)."""
        if layer not in self.weights:
            raise ConfigError(
                f"Residual directions were built at layers {list(self.layers)}, not at layer {layer}.",
                "Build them at the audited layers (residual_directions(base, layers)).",
            )
        x = torch.as_tensor(resid)
        w, o = self.weights[layer], self.origins[layer]
        return x.to(torch.float64) @ w.to(x.device) - o.to(x.device)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.base_digest, self.library_digest, list(self.layers),
                             [[d.name, d.kind, d.risk_sign, list(d.concepts)] for d in self.directions]]).encode())
        for layer in self.layers:
            h.update(self.weights[layer].contiguous().numpy().tobytes())
            h.update(self.origins[layer].contiguous().numpy().tobytes())
        return h.hexdigest()


def directions_from_reads(
    reads: Mapping[tuple[str, int], ConceptReads], concepts: Sequence[Concept], layers: Sequence[int], *,
    base_digest: str, pairs: Mapping[str, Sequence[int]] | None = None, loco: bool = False, massive_factor: float = 10.0,
) -> ResidualDirections:
    """One direction per concept, then ``general``, then (with `loco`) ``general-without-<c>`` per
    concept; `pairs`: the pairs of each concept to build from (default all; a held-out split)."""
    names = [c.name for c in concepts]
    specs: list[tuple[ResidualDirection, Callable[[int], DirectionSums]]] = []
    for c in concepts:
        sel = None if pairs is None else pairs[c.name]
        specs.append((ResidualDirection(c.name, c.label, "concept", c.risk_sign, (c.name,)),
                      lambda layer, c=c, sel=sel: concept_sums(reads[(c.name, layer)], sel)))
    specs.append((ResidualDirection(GENERAL, GENERAL_LABEL, "general", 1.0, tuple(names)),
                  lambda layer: general_sums(reads, concepts, layer, pairs=pairs)))
    if loco:
        for c in concepts:
            rest = tuple(n for n in names if n != c.name)
            specs.append((ResidualDirection(loco_name(c.name), f"{GENERAL_LABEL}, without {c.label}", "general_loco", 1.0, rest),
                          lambda layer, c=c: general_sums(reads, concepts, layer, pairs=pairs, exclude={c.name})))
    weights: dict[int, torch.Tensor] = {}
    origins: dict[int, torch.Tensor] = {}
    for layer in layers:
        scaled = [build(layer).scaled() for _, build in specs]
        weights[layer] = torch.from_numpy(np.stack([w for w, _ in scaled], axis=1))
        origins[layer] = torch.tensor([o for _, o in scaled], dtype=torch.float64)
    return ResidualDirections(
        base_digest, library_digest(concepts), tuple(layers), tuple(d for d, _ in specs),
        MappingProxyType(weights), MappingProxyType(origins), float(massive_factor),
    )


def residual_directions(
    base: Any, layers: Sequence[int], concepts: Sequence[Concept | str | Path] | None = None, *,
    loco: bool = False, massive_factor: float = 10.0, token_budget: int = 4096,
) -> ResidualDirections:
    """Residual concept directions and the general direction of `base` (a ModelHandle) at
    `layers`, from `concepts` (Concept objects, built-in names or concept files; default the
    built-in library). With `loco`, also the general direction without each concept."""
    concepts = load_concepts() if concepts is None else [c if isinstance(c, Concept) else load_concept(c) for c in concepts]
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"Concepts {dup} are given more than once.", "Give each concept once (names must be distinct).")
    total = sum(2 * len(c.pairs) for c in concepts)
    with progress("Residual concept directions (base model)", total) as advance:
        reads = concept_reads(base, concepts, layers, massive_factor=massive_factor, token_budget=token_budget, on_batch=advance)
    return directions_from_reads(reads, concepts, layers, base_digest=base.digest, loco=loco, massive_factor=massive_factor)
