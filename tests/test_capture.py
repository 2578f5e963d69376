"""Captured residuals are exactly the model's hidden states; padding is never measured."""

from __future__ import annotations

import pytest
import torch

import tiny
from neuronlens.capture import TokenSequence, gather, make_batches, run_to_layers
from neuronlens.models import decoder_layers


@pytest.mark.parametrize("build", [tiny.tiny_llama, tiny.tiny_gpt2])
def test_residuals_equal_output_hidden_states(tok, build):
    model = build(tok)
    ids = torch.tensor([tok("How do I open a savings account?")["input_ids"]])
    mask = torch.ones_like(ids)
    n = len(decoder_layers(model))
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    inner = list(range(n - 1))
    got = run_to_layers(model, ids, mask, inner)
    for layer in inner:
        # hidden_states[L + 1] is the output of block L (the last entry has the final norm applied)
        torch.testing.assert_close(got[layer], hs[layer + 1], rtol=0, atol=0)


def test_last_layer_is_block_output_not_final_norm(tok):
    model = tiny.tiny_llama(tok)
    ids = torch.tensor([tok("hello there")["input_ids"]])
    mask = torch.ones_like(ids)
    last = len(decoder_layers(model)) - 1
    got = run_to_layers(model, ids, mask, [last])[last]
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    torch.testing.assert_close(model.model.norm(got), hs[-1])


def test_forward_stops_after_deepest_layer(tok):
    model = tiny.tiny_llama(tok)
    calls = []
    model.lm_head.register_forward_hook(lambda *a: calls.append("lm_head"))
    decoder_layers(model)[3].register_forward_hook(lambda *a: calls.append("block3"))
    ids = torch.tensor([tok("stop early")["input_ids"]])
    run_to_layers(model, ids, torch.ones_like(ids), [1, 2])
    assert calls == []


def test_padding_is_not_measured_and_does_not_change_values(tok):
    model = tiny.tiny_llama(tok)
    a = TokenSequence("s", 0, tuple(tok("a short prompt")["input_ids"]), tuple(tok(" answer")["input_ids"]))
    b = TokenSequence("s", 1, tuple(tok("a much longer prompt with many more words in it")["input_ids"]), tuple(tok(" ok")["input_ids"]))
    batched = list(make_batches([a, b], "response", 4096, tok.pad_token_id))
    assert len(batched) == 1
    batch = batched[0]
    x = gather(run_to_layers(model, batch.input_ids, batch.attention_mask, [2])[2], batch)
    assert x.shape[0] == len(a.response_ids) + len(b.response_ids)
    singles = []
    for s in sorted([a, b], key=len, reverse=True):
        (one,) = list(make_batches([s], "response", 4096, tok.pad_token_id))
        singles.append(gather(run_to_layers(model, one.input_ids, one.attention_mask, [2])[2], one))
    torch.testing.assert_close(x, torch.cat(singles), atol=1e-5, rtol=1e-5)


def test_positions_modes():
    s = TokenSequence("s", 0, (1, 2, 3, 4), (5, 6, 7))
    assert list(s.positions("response")) == [4, 5, 6]
    assert list(s.positions("prompt")) == [1, 2, 3]
    assert list(s.positions("last")) == [6]
    assert list(s.positions("all")) == [1, 2, 3, 4, 5, 6]  # position 0 (attention sink) never


def test_token_budget_batches():
    seqs = [TokenSequence("s", i, tuple(range(10)), tuple(range(10))) for i in range(10)]
    batches = list(make_batches(seqs, "all", 60, 0))
    assert all(b.input_ids.numel() <= 60 for b in batches)
    assert sum(len(b.sequences) for b in batches) == 10


def _arch_model(name: str, vocab: int):
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=256)
    cfgs = {
        "mistral": (tf.MistralConfig, dict(num_key_value_heads=2)),
        "qwen2": (tf.Qwen2Config, dict(num_key_value_heads=2)),
        "gemma": (tf.GemmaConfig, dict(num_key_value_heads=2, head_dim=16)),
        "phi": (tf.PhiConfig, {}),
        "phi3": (tf.Phi3Config, dict(num_key_value_heads=2, pad_token_id=0)),
        "gpt_neox": (tf.GPTNeoXConfig, {}),
    }
    cls, extra = cfgs[name]
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(cls(**common, **extra)).eval()


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "gemma", "phi", "phi3", "gpt_neox"])
def test_block_discovery_across_architectures(tok, arch):
    model = _arch_model(arch, len(tok))
    blocks = decoder_layers(model)
    assert len(blocks) == 3
    ids = torch.tensor([tok("Is it safe to mix bleach and vinegar?")["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    got = run_to_layers(model, ids, mask, [0, 1])
    for layer in (0, 1):
        torch.testing.assert_close(got[layer], hs[layer + 1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("max_tokens", [1, 5, 9, 1000])
def test_row_chunks_split_whole_rows_and_cover_every_token_once(max_tokens):
    from neuronlens.capture import row_chunks

    seqs = [TokenSequence("p", i, (1, 2, 3), tuple(range(4, 4 + n))) for i, n in enumerate([6, 2, 4, 1, 3])]
    (batch,) = make_batches(seqs, "response", 10_000, 0)
    seen = []
    for sub, ix in row_chunks(batch, max_tokens):
        ix = torch.arange(batch.n_tokens)[ix]
        seen += ix.tolist()
        assert sub.n_tokens == ix.numel() and (sub.n_tokens <= max_tokens or len(sub.sequences) == 1)
        assert torch.equal(sub.col, batch.col[ix])  # the same token positions ...
        for r, seq in enumerate(sub.sequences):  # ... of whole rows, re-indexed within the chunk
            assert (sub.row == r).sum() == len(seq.response_ids) and torch.equal(sub.input_ids[r], batch.input_ids[batch.sequences.index(seq)])
    assert sorted(seen) == list(range(batch.n_tokens))
