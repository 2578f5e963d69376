"""Risk-stage building blocks that need no model: concept files, label files, associations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuronlens.errors import ConfigError
from neuronlens.risk import builtin_concept_names, load_concept, load_concepts
from neuronlens.risk import associations_from_means
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
    with pytest.raises(ConfigError, match="name None is not a non-empty string"):
        load_concept(_concept(tmp_path, good, name=None))


def test_a_concept_file_that_is_not_utf8_is_a_config_error(tmp_path):
    f = tmp_path / "c.json"
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"c\.json is not UTF-8 text \(byte 0 is 0xff\)"):
        load_concept(f)
    good = [{"prompt": f"q{i}", "positive": f"bad {i}", "negative": f"good {i}"} for i in range(40)]
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"name": "x", "label": "X", "polarity": "harmful", "pairs": good}).encode())
    assert len(load_concept(f).pairs) == 40  # saved with a byte-order mark: still UTF-8


def test_a_concept_needs_a_prompt_per_pair(tmp_path):
    one_prompt = [{"prompt": "same", "positive": f"bad {i}", "negative": f"good {i}"} for i in range(40)]
    with pytest.raises(ConfigError, match="pair 1 repeats the prompt of pair 0"):
        load_concept(_concept(tmp_path, one_prompt))
    good = [{"prompt": f"q{i}", "positive": f"bad {i}", "negative": f"good {i}"} for i in range(40)]
    with pytest.raises(ConfigError, match="pair 40 repeats the prompt of pair 7"):  # an exact duplicate pair
        load_concept(_concept(tmp_path, good + [good[7]]))
    with pytest.raises(ConfigError, match="pair 40 repeats the prompt of pair 3"):  # differs only in case and spaces
        load_concept(_concept(tmp_path, good + [{"prompt": " Q3 ", "positive": "other", "negative": "reply"}]))


def test_label_files(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("layer,latent,label\n9,5,Money talk\n30,1,elsewhere\n")
    assert load_label_file(csv, {9: 10}, n_layers=32) == {(9, 5): ("Money talk", "imported:labels.csv")}
    np_json = tmp_path / "np.json"
    np_json.write_text(json.dumps([{"modelId": "m", "layer": "9-res-nl", "index": "7", "description": "Scam pitch"}]))
    assert load_label_file(np_json, {9: 10}, n_layers=32)[(9, 7)] == ("Scam pitch", "imported:np.json")
    csv.write_text("layer,latent,label\n9,12,too far\n")
    with pytest.raises(ConfigError, match="line 2: latent 12 of layer 9 is out of range: that SAE has 10 latents"):
        load_label_file(csv, {9: 10}, n_layers=32)
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="header"):
        load_label_file(csv, {9: 10}, n_layers=32)


def test_a_label_for_a_layer_outside_the_model_is_an_error_but_an_unaudited_one_is_ignored(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("layer,latent,label\n9,5,Money talk\n3,1,unaudited layer\n")
    assert load_label_file(csv, {9: 10}, n_layers=12) == {(9, 5): ("Money talk", "imported:labels.csv")}
    csv.write_text("layer,latent,label\n9,5,Money talk\n99,5,another model\n")
    with pytest.raises(ConfigError, match=r"labels\.csv, line 3: layer 99 is not a layer of the model, which has 12 layers"):
        load_label_file(csv, {9: 10}, n_layers=12)


def test_a_csv_label_file_with_a_byte_order_mark_is_read(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_bytes("\ufefflayer,latent,label\r\n9,5,Money talk\r\n".encode())
    assert load_label_file(csv, {9: 10}, n_layers=12) == {(9, 5): ("Money talk", "imported:labels.csv")}


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("l.csv", "layer,latent,label\n9,1,ok\n9,5\n", r"l\.csv, line 3: the row has no label"),
        ("l.csv", "layer,latent,label\n9,5,\n", r"l\.csv, line 2: the label is empty"),
        ("l.csv", "layer,latent,label\n\n9,five,x\n", r"l\.csv, line 3: latent \"five\" is not an integer"),
        ("l.csv", "layer,latent,label\n9,5.0,x\n", r"line 2: latent \"5\.0\" is not an integer"),
        ("l.csv", "layer,latent,label\n9,5,Money, talk\n", "line 2: the row has more fields than the header"),
        ("l.csv", "layer,latent,label\n9,-1,x\n", "line 2: latent -1 is negative"),
        ("l.json", json.dumps([{"layer": "9-res", "index": "abc", "description": "x"}]), r"l\.json, explanation 1: index \"abc\" is not an integer"),
        ("l.json", json.dumps([{"layer": 9, "index": 1, "description": "a"}, {"layer": 9, "index": None, "description": "x"}]),
         "explanation 2: index null is not an integer"),
        ("l.json", json.dumps([{"layer": "9-res", "index": 5.7, "description": "x"}]), r"explanation 1: index 5\.7 is not an integer"),
        ("l.json", json.dumps([{"layer": 9.5, "index": 5, "description": "x"}]), r"explanation 1: layer 9\.5 is not an integer"),
        ("l.json", json.dumps([{"layer": "blocks.9.hook", "index": 5, "description": "x"}]), "does not start with a layer number"),
        ("l.json", json.dumps([{"layer": "9-res", "index": 5, "description": ["x"]}]), "description .* is not a non-empty string"),
        ("l.json", json.dumps([{"layer": "9-res", "index": 5}]), "explanation 1 lacks description"),
        ("l.json", json.dumps(["x"]), "explanation 1 is \"x\", not an object"),
        ("l.txt", "9 5 x\n", "neither a .json nor a .csv"),
    ],
)
def test_a_malformed_label_file_names_the_row(tmp_path, name, content, match):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_label_file(f, {9: 10}, n_layers=12)


@pytest.mark.parametrize("name", ["l.csv", "l.json"])
def test_a_label_file_that_is_not_utf8_is_a_config_error(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"layer,latent,label\n9,5,caf\xe9\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 26 is 0xe9\)"):
        load_label_file(f, {9: 10}, n_layers=12)


@pytest.mark.parametrize("row,match", [("1,5\n", "line 2: the row has no label"), ("99,5,x\n", "layer 99 is not a layer of the model")])
def test_a_bad_label_file_stops_the_audit_before_saes_are_resolved(tmp_path, tiny_base_dir, monkeypatch, row, match):
    from neuronlens import alignment, pipeline

    monkeypatch.setattr("neuronlens.pipeline._plan.resolve_saes", lambda *a, **k: pytest.fail("SAEs resolved (maybe trained) before the label file was read"))
    bad = tmp_path / "bad.csv"
    bad.write_text("layer,latent,label\n" + row)
    cfg = alignment.AuditConfig(max_prompts_per_set=4, max_new_tokens=4, probes=["finance"], layers=[1, 3], labels=[str(bad)])
    base = alignment.load_model(tiny_base_dir)
    with pytest.raises(ConfigError, match=match):
        alignment.compare_models(base, alignment.load_model(tiny_base_dir), config=cfg, metrics=["drift"])
    with pytest.raises(ConfigError, match=match):
        pipeline.prepare_reference(base, config=cfg, metrics=["drift"])


def test_association_finds_the_planted_latent():
    rng = np.random.default_rng(0)
    n, d = 48, 30
    labels = np.array([1, 0] * n)
    means = rng.random((2 * n, d))
    means[labels == 1, 4] += 1.0  # latent 4 fires more on positives
    a = associations_from_means("c", 3, means, labels)
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
    a = associations_from_means(concept.name, 3, means, labels)
    A._store_cached("m" * 64, "s" * 64, concept, 3, a)
    return A, concept, a, A.association_cache_path("m" * 64, "s" * 64, concept, 3)


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
