"""The base pass is cached across audits of one base: a second fine-tune is audited without
loading the base weights, with the same statistics as without the cache; a corrupt entry is
rebuilt; a handle with another model attached is never cached."""

from __future__ import annotations

import pytest
import torch

import tiny
from conftest import random_sae
from neuronlens import alignment
from neuronlens._cache import cache_root
from neuronlens.models import _handle
from neuronlens.saes import SAESet

CFG = alignment.AuditConfig(max_prompts_per_set=4, max_new_tokens=8)
PROBES = ["finance", "legal"]
DRIFT = ["drift"]


@pytest.fixture(scope="module")
def saes():
    return SAESet({1: random_sae(64, 128, 1, seed=1), 3: random_sae(64, 128, 3, seed=3)})


@pytest.fixture(scope="module")
def finetunes(tmp_path_factory, tok, tiny_base_dir):
    """Two full-weight 'fine-tunes' of the tiny base: layer 2's MLP moved by two known amounts."""
    out = []
    for i, scale in enumerate((0.05, 0.2)):
        model = alignment.load_model(tiny_base_dir).model
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.model.layers[2].mlp.parameters():
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g).to(p.device))
        out.append(tiny.save(model, tok, tmp_path_factory.mktemp(f"ft{i}") / "ft"))
    return out


def _entries():
    return sorted((cache_root() / "base_pass").glob("*.safetensors"))


def _audit(base_dir, ft_dir, saes, **kw):
    return alignment.compare_models(alignment.load_model(base_dir), alignment.load_model(ft_dir), saes, probes=PROBES,
                                    metrics=DRIFT, config=CFG, **kw)


def _loads(monkeypatch) -> list[str]:
    """Names of the checkpoints whose weights get loaded from here on."""
    loaded: list[str] = []
    real = _handle._load_weights

    def spy(handle):
        loaded.append(str(handle.path))
        return real(handle)

    monkeypatch.setattr(_handle, "_load_weights", spy)
    return loaded


def _same_sums(a, b):
    fa, fb = a.sums.to_flat(), b.sums.to_flat()
    assert fa.keys() == fb.keys()
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], rtol=1e-12, atol=0, msg=k)


def test_second_finetune_reuses_the_base_pass_without_loading_the_base(monkeypatch, tiny_base_dir, finetunes, saes):
    uncached = _audit(tiny_base_dir, finetunes[1], saes, cache_base_pass=False)
    assert _entries() == []  # opting out writes nothing
    _audit(tiny_base_dir, finetunes[0], saes)  # fills the caches: base responses and base pass
    assert len(_entries()) == 1
    loaded = _loads(monkeypatch)
    cached = _audit(tiny_base_dir, finetunes[1], saes)
    assert loaded == [str(finetunes[1])]  # the base model's weights were never loaded
    _same_sums(cached, uncached)
    assert [ld.drift for ld in cached.layers] == [ld.drift for ld in uncached.layers]
    assert cached.layers[-1].drift > 0  # layer 2 moved, layer 3 sees it


def test_a_corrupt_entry_is_rebuilt_not_trusted(monkeypatch, tiny_base_dir, finetunes, saes):
    first = _audit(tiny_base_dir, finetunes[0], saes)
    (entry,) = _entries()
    raw = bytearray(entry.read_bytes())
    raw[-8:] = bytes(8)  # the last residual values, zeroed: a parseable file with wrong numbers
    entry.write_bytes(bytes(raw))
    loaded = _loads(monkeypatch)
    with pytest.warns(UserWarning, match="corrupt or stale; rebuilding"):
        again = _audit(tiny_base_dir, finetunes[0], saes)
    assert str(tiny_base_dir) in loaded  # the base pass ran again
    _same_sums(again, first)
    assert len(_entries()) == 1  # and its entry was written anew
    _audit(tiny_base_dir, finetunes[0], saes)  # which is now trusted


def test_settings_that_change_the_tokens_get_their_own_entry(tiny_base_dir, finetunes, saes):
    _audit(tiny_base_dir, finetunes[0], saes)
    alignment.compare_models(alignment.load_model(tiny_base_dir), alignment.load_model(finetunes[0]), saes, probes=PROBES,
                             metrics=DRIFT, config=alignment.AuditConfig(max_prompts_per_set=4, max_new_tokens=8, positions="all"))
    assert len(_entries()) == 2


def test_an_attached_model_is_never_cached(tiny_base_dir, finetunes, saes):
    base = alignment.load_model(tiny_base_dir)
    other = alignment.load_model(finetunes[0]).model  # not the checkpoint the digest names
    base.attach(other)
    alignment.compare_models(base, alignment.load_model(finetunes[1]), saes, probes=PROBES, metrics=DRIFT, config=CFG)
    assert _entries() == []
    assert not list((cache_root() / "responses").glob("*.json")) or all(
        str(base.digest) not in p.read_text() for p in (cache_root() / "responses").glob("*.json")
    )


@pytest.mark.parametrize("content", [b"\xff\xfe\x00", b"[1]", b"{}", b"not json"])
def test_a_json_cache_entry_that_cannot_be_read_is_discarded(content):
    """A generated-responses entry (or any JSON entry) that is not UTF-8 or not the entry's shape
    is removed with a warning and rebuilt by the caller, never a crash (it was a UnicodeDecodeError)."""
    from neuronlens._cache import entry_path, load_json_entry, store_json_entry

    key = {"what": "responses", "n": 1}
    store_json_entry("responses", key, ["an answer"])
    assert load_json_entry("responses", key) == ["an answer"]
    entry_path("responses", key, ".json").write_bytes(content)
    with pytest.warns(UserWarning, match="corrupt or stale; rebuilding"):
        assert load_json_entry("responses", key) is None
    assert not entry_path("responses", key, ".json").exists()
