"""Residual concept directions and the general "unsafe vs safe reply" direction (risk/_residual.py).

A tiny random-init Llama reads concepts written here. A planted direction is added by a forward
hook on decoder block LAYER to every position of a sequence that contains the concept's marker
character (appended to each positive reply, and never in the probe texts the tokenizer was trained
on), so the positive replies of concept A carry +v at LAYER and the negative replies do not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronlens import alignment
from neuronlens.concepts import Concept, ConceptPair
from neuronlens.errors import ConfigError
from neuronlens.models import decoder_layers
from neuronlens.probes import builtin_names, load_probe_set
from neuronlens.risk import (
    GENERAL, DirectionSums, concept_reads, directions_from_reads, general_sums, library_digest, loco_name, residual_directions,
)
from neuronlens.risk import _residual

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = 1
N_PAIRS = 12


def _texts() -> list[str]:
    return [p for name in builtin_names() for p in load_probe_set(name).prompts]


def _concept(name: str, polarity: str, mark: str, offset: int, n: int = N_PAIRS) -> Concept:
    t = _texts()
    pairs = tuple(ConceptPair(t[offset + i], t[offset + 150 + i] + mark, t[offset + 150 + i]) for i in range(n))
    return Concept(name, name.replace("_", " ").title(), polarity, "", pairs, "test")


class _Plant:
    """Adds `vectors[token]` to every position at decoder block `layer` of each row holding `token`;
    `spikes[token]` only at that token's own positions."""

    def __init__(self, model: torch.nn.Module, layer: int, vectors: dict[int, torch.Tensor], spikes: dict[int, torch.Tensor] | None = None):
        self.ids: torch.Tensor | None = None
        self.vectors, self.spikes = vectors, spikes or {}
        model.register_forward_pre_hook(self._keep_ids, with_kwargs=True)
        decoder_layers(model)[layer].register_forward_hook(self._add)

    def _keep_ids(self, _module, _args, kwargs):
        self.ids = kwargs["input_ids"]

    def _add(self, _module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        assert self.ids is not None
        for token, vec in self.vectors.items():
            hidden = hidden + (self.ids == token).any(1)[:, None, None] * vec
        for token, vec in self.spikes.items():
            hidden = hidden + (self.ids == token)[:, :, None] * vec
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _cos(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def vectors(tiny_base_dir, tok):
    """Two orthogonal planted vectors, each 3x the median residual norm at LAYER."""
    handle = alignment.load_model(tiny_base_dir)
    ids = tok("How do I open a savings account for my child?", return_tensors="pt")
    with torch.no_grad():
        hidden = handle.model(**ids, output_hidden_states=True).hidden_states[LAYER + 1][0, 1:]
    norm = float(hidden.norm(dim=-1).median())
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(hidden.shape[-1], 2, generator=g))
    return 3 * norm * q[:, 0], 3 * norm * q[:, 1], norm


@pytest.fixture()
def concepts():
    """A (harmful, marker ~), B (protective, marker ^), C (harmful, marker |)."""
    return [_concept("harm_a", "harmful", "~", 0), _concept("caveat_b", "protective", "^", 20), _concept("harm_c", "harmful", "|", 40)]


def _planted(tiny_base_dir, tok, vectors, spikes=None):
    v, w, _ = vectors
    handle = alignment.load_model(tiny_base_dir)
    mark = tok.convert_tokens_to_ids
    # A's positives carry +v; B's positives (the safe side: caveats) carry -v; C's carry +w
    _Plant(handle.model, LAYER, {mark("~"): v, mark("^"): -v, mark("|"): w}, spikes)
    return handle


def test_planted_directions_are_recovered(tiny_base_dir, tok, vectors, concepts):
    v, w, _ = vectors
    dirs = residual_directions(_planted(tiny_base_dir, tok, vectors), [LAYER], concepts, loco=True)
    col = dirs.weights[LAYER]
    assert dirs.names[:4] == ["harm_a", "caveat_b", "harm_c", GENERAL]
    assert dirs.risk_signs.tolist() == [1.0, -1.0, 1.0, 1.0] + [1.0] * 3
    assert _cos(col[:, dirs.index("harm_a")], v) > 0.99
    assert _cos(col[:, dirs.index("caveat_b")], -v) > 0.99  # a protective concept: its positives are the safe side
    assert _cos(col[:, dirs.index("harm_c")], w) > 0.99
    # general: unsafe minus safe over all pairs, B flipped: (v + v + w) / 3 per pair
    assert _cos(col[:, dirs.index(GENERAL)], 2 * v + w) > 0.99
    assert _cos(col[:, dirs.index(loco_name("harm_c"))], v) > 0.99
    assert _cos(col[:, dirs.index(loco_name("harm_a"))], v + w) > 0.99


def test_projection_is_0_at_negative_mean_and_1_at_positive_mean(tiny_base_dir, tok, vectors, concepts):
    handle = _planted(tiny_base_dir, tok, vectors)
    dirs = residual_directions(handle, [LAYER], concepts)
    reads = concept_reads(handle, concepts, [LAYER])  # from the cache the call above filled
    for c in concepts:
        r = reads[(c.name, LAYER)]
        k = dirs.index(c.name)
        ends = dirs.project(LAYER, np.stack([r.negative.mean(0), r.positive.mean(0)]))[:, k]
        assert ends.tolist() == pytest.approx([0.0, 1.0], abs=1e-9)
    g = general_sums(reads, concepts, LAYER)
    ends = dirs.project(LAYER, np.stack([g.neg_mean, g.pos_mean]))[:, dirs.index(GENERAL)]
    assert ends.tolist() == pytest.approx([0.0, 1.0], abs=1e-9)
    tokens = torch.randn(5, handle.d_model, dtype=torch.float64)
    assert dirs.project(LAYER, tokens).shape == (5, len(dirs.names))
    # the coordinate is affine: the mean of token coordinates is the coordinate of the mean token
    assert dirs.project(LAYER, tokens).mean(0).tolist() == pytest.approx(dirs.project(LAYER, tokens.mean(0, keepdim=True))[0].tolist(), abs=1e-9)


def test_loco_general_direction_is_built_without_the_concepts_pairs(tiny_base_dir, tok, vectors, concepts):
    handle = _planted(tiny_base_dir, tok, vectors)
    reads = concept_reads(handle, concepts, [LAYER])
    full = directions_from_reads(reads, concepts, [LAYER], base_digest=handle.digest, loco=True)
    for left_out in concepts:
        rest = [c for c in concepts if c.name != left_out.name]
        without = directions_from_reads(reads, rest, [LAYER], base_digest=handle.digest)
        loco = full.directions[full.index(loco_name(left_out.name))]
        assert loco.concepts == tuple(c.name for c in rest)
        assert torch.equal(full.weights[LAYER][:, full.index(loco.name)], without.weights[LAYER][:, without.index(GENERAL)])
        # whatever the left-out concept's replies hold, its LOCO direction does not change
        spoiled = dict(reads)
        r = reads[(left_out.name, LAYER)]
        spoiled[(left_out.name, LAYER)] = type(r)(r.concept, LAYER, r.positive + 100.0, r.negative - 50.0)
        again = directions_from_reads(spoiled, concepts, [LAYER], base_digest=handle.digest, loco=True)
        assert torch.equal(again.weights[LAYER][:, again.index(loco.name)], full.weights[LAYER][:, full.index(loco.name)])
        assert not torch.equal(again.weights[LAYER][:, again.index(GENERAL)], full.weights[LAYER][:, full.index(GENERAL)])


def test_held_out_pairs_are_not_read_into_the_direction(tiny_base_dir, tok, vectors, concepts):
    handle = _planted(tiny_base_dir, tok, vectors)
    reads = concept_reads(handle, concepts, [LAYER])
    build = {c.name: list(range(0, N_PAIRS, 2)) for c in concepts}
    split = directions_from_reads(reads, concepts, [LAYER], base_digest=handle.digest, pairs=build)
    r = reads[("harm_a", LAYER)]
    w, origin = DirectionSums.of(r.positive[::2], r.negative[::2]).scaled()
    assert np.array_equal(split.weights[LAYER][:, split.index("harm_a")].numpy(), w)
    assert float(split.origins[LAYER][split.index("harm_a")]) == origin


def test_sums_merge_exactly():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(-50, 50, (9, 6)).astype(np.float64), rng.integers(-50, 50, (9, 6)).astype(np.float64)
    whole = DirectionSums.of(pos, neg)
    merged = DirectionSums.of(pos[:4], neg[:4]) + DirectionSums.of(pos[4:], neg[4:])
    assert np.array_equal(whole.pos_sum, merged.pos_sum) and np.array_equal(whole.neg_sum, merged.neg_sum)
    assert (whole.n_pos, whole.n_neg) == (merged.n_pos, merged.n_neg) == (9, 9)
    assert np.array_equal(whole.scaled()[0], merged.scaled()[0])


def test_massive_activations_are_left_out(tiny_base_dir, tok, vectors, concepts):
    """A spike of 1,000x the median norm on the marker token of A's positive replies: kept, it would
    turn A's direction towards the spike; left out (as the audit does), A's direction stays v."""
    v, w, norm = vectors
    spike = 1000 * norm * w / w.norm()
    handle = _planted(tiny_base_dir, tok, vectors, spikes={tok.convert_tokens_to_ids("~"): spike})
    dirs = residual_directions(handle, [LAYER], concepts[:1])
    assert _cos(dirs.weights[LAYER][:, 0], v) > 0.99
    kept = residual_directions(handle, [LAYER], concepts[:1], massive_factor=1e9)  # another cache entry
    assert _cos(kept.weights[LAYER][:, 0], w) > 0.9


def test_reads_are_cached_and_the_key_follows_the_library(tiny_base_dir, concepts, monkeypatch):
    handle = alignment.load_model(tiny_base_dir)
    first = residual_directions(handle, [LAYER], concepts)
    assert all(_residual.cache_path(handle.digest, c, LAYER).is_file() for c in concepts)

    def no_reading(*_a, **_k):
        raise AssertionError("read the model although every concept was cached")

    monkeypatch.setattr(_residual, "mean_residuals", no_reading)
    again = residual_directions(handle, [LAYER], concepts)
    assert again.digest == first.digest and again.library_digest == library_digest(concepts)
    changed = [concepts[0], concepts[1], _concept("harm_c", "harmful", "|", 40, n=N_PAIRS - 1)]
    assert library_digest(changed) != library_digest(concepts)
    assert library_digest(concepts[:2]) != library_digest(concepts)
    assert _residual.cache_path(handle.digest, changed[2], LAYER) != _residual.cache_path(handle.digest, concepts[2], LAYER)
    with pytest.raises(AssertionError, match="read the model"):  # the changed concept is read again
        residual_directions(handle, [LAYER], changed)


def test_bad_requests_are_named(tiny_base_dir, concepts):
    handle = alignment.load_model(tiny_base_dir)
    dirs = residual_directions(handle, [LAYER], concepts[:2])
    with pytest.raises(ConfigError, match="layers \\[1\\], not at layer 2"):
        dirs.project(2, torch.zeros(1, handle.d_model))
    with pytest.raises(ConfigError, match="more than once"):
        residual_directions(handle, [LAYER], [concepts[0], concepts[0]])
