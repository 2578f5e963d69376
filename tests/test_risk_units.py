"""Risk-stage building blocks that need no model: concept files, label files, associations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuronlens.errors import ConfigError
from neuronlens.risk import builtin_concept_names, load_concept, load_concepts
from neuronlens.risk._association import _associations_from_means
from neuronlens.risk._labels import load_label_file

EXPECTED = {"misaligned_persona", "fraud_scam", "disclaimers", "insecure_code", "deception_manipulation",
            "dangerous_medical", "illegal_instructions", "power_seeking"}


def test_builtin_concepts_are_complete_and_matched():
    assert EXPECTED <= set(builtin_concept_names())
    for c in load_concepts():
        assert len(c.pairs) >= 40 and c.polarity in ("harmful", "protective")
        assert len({p.prompt for p in c.pairs}) == len(c.pairs)
    assert load_concept("disclaimers").polarity == "protective"


def _concept(tmp_path, pairs, **kw):
    obj = {"name": "x", "label": "X", "polarity": "harmful", "description": "", "pairs": pairs, **kw}
    f = tmp_path / "x.json"
    f.write_text(json.dumps(obj))
    return f


def test_concept_file_errors(tmp_path):
    good = [{"prompt": f"q{i}", "positive": f"bad {i}", "negative": f"good {i}"} for i in range(40)]
    assert len(load_concept(_concept(tmp_path, good)).pairs) == 40
    with pytest.raises(ConfigError, match="39 matched pairs; at least 40"):
        load_concept(_concept(tmp_path, good[:39]))
    with pytest.raises(ConfigError, match="pair 3 is not matched"):
        load_concept(_concept(tmp_path, good[:3] + [{"prompt": "q", "positive": "p"}] + good[4:]))
    with pytest.raises(ConfigError, match="polarity"):
        load_concept(_concept(tmp_path, good, polarity="evil"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_concept(tmp_path / "broken.json")


def test_label_files(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("layer,latent,label\n9,5,Money talk\n30,1,elsewhere\n")
    assert load_label_file(csv, {9: 10}) == {(9, 5): ("Money talk", "imported:labels.csv")}
    np_json = tmp_path / "np.json"
    np_json.write_text(json.dumps([{"modelId": "m", "layer": "9-res-nl", "index": "7", "description": "Scam pitch"}]))
    assert load_label_file(np_json, {9: 10})[(9, 7)] == ("Scam pitch", "imported:np.json")
    csv.write_text("layer,latent,label\n9,12,too far\n")
    with pytest.raises(ConfigError, match="has 10 latents"):
        load_label_file(csv, {9: 10})
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="header"):
        load_label_file(csv, {9: 10})


def test_association_finds_the_planted_latent():
    rng = np.random.default_rng(0)
    n, d = 48, 30
    labels = np.array([1, 0] * n)
    means = rng.random((2 * n, d))
    means[labels == 1, 4] += 1.0  # latent 4 fires more on positives
    a = _associations_from_means("c", 3, means, labels)
    assert list(a.latents) == [4] and a.auroc[4] > 0.95
    w = a.direction / a.gap
    # the projection puts negatives at 0 and positives at 1 on average
    assert (means[labels == 1].mean(0) - means[labels == 0].mean(0)) @ w == pytest.approx(1.0)


def _stored_association(monkeypatch, tmp_path):
    from neuronlens.risk import _association as A

    monkeypatch.setenv("NEURONLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(A, "_shipped_roots", lambda digest: [tmp_path / "shipped"])
    rng = np.random.default_rng(1)
    labels = np.array([1, 0] * 48)
    means = rng.random((96, 20))
    means[labels == 1, 7] += 1.0
    concept = load_concepts()[0]
    a = _associations_from_means(concept.name, 3, means, labels)
    A._store_cached("m" * 64, "s" * 64, concept, 3, a)
    return A, concept, a, A._cache_path("m" * 64, "s" * 64, concept, 3)


def test_association_cache_round_trips_exactly(monkeypatch, tmp_path):
    A, concept, a, _ = _stored_association(monkeypatch, tmp_path)
    b = A._load_cached("m" * 64, "s" * 64, concept, 3)
    assert b is not None and np.array_equal(b.direction, a.direction) and np.array_equal(b.q_value, a.q_value)
    assert A._load_cached("m" * 64, "t" * 64, concept, 3) is None  # another SAE: another entry


def _flip_last_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # a bit flip in the last tensor's data: the file still parses
    path.write_bytes(bytes(raw))


def test_a_corrupt_association_entry_is_recomputed_not_trusted(monkeypatch, tmp_path):
    A, concept, _, path = _stored_association(monkeypatch, tmp_path)
    _flip_last_byte(path)
    with pytest.warns(UserWarning, match="corrupt or stale"):
        assert A._load_cached("m" * 64, "s" * 64, concept, 3) is None
    assert not path.exists()


def test_a_tampered_shipped_association_is_refused(monkeypatch, tmp_path):
    import shutil

    A, concept, _, path = _stored_association(monkeypatch, tmp_path)
    (tmp_path / "shipped").mkdir()
    shipped = tmp_path / "shipped" / path.name
    shutil.copyfile(path, shipped)
    path.unlink()
    assert A._load_cached("m" * 64, "s" * 64, concept, 3) is not None  # the shipped copy is used
    _flip_last_byte(shipped)
    with pytest.warns(UserWarning, match="shipped concept association .* is corrupt"):
        assert A._load_cached("m" * 64, "s" * 64, concept, 3) is None
    assert shipped.exists()  # the package's file is reported, not deleted
