"""The gold standard: a fine-tune whose change is known by construction, found exactly.

The fine-tuned model is the base plus alpha * d_j added to the output of block L (through the
MLP's down-projection bias, so nothing else in block L changes), where d_j is decoder direction j
of a ReLU SAE with orthonormal decoder rows and W_enc = W_dec^T. Then latent j's pre-activation
rises by exactly alpha on every token and no other latent of layer L moves.
"""

from __future__ import annotations

import pytest
import torch

import tiny
from neuronlens import alignment
from neuronlens.saes import SAEInfo, SAESet, SparseAutoencoder

LAYER, PLANTED, ALPHA = 2, 5, 3.0
HIDDEN, D_SAE = 64, 48


def _orthonormal_sae(layer: int, seed: int, bias_j: float | None = None) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(HIDDEN, HIDDEN, generator=g))
    sae = SparseAutoencoder(SAEInfo(d_in=HIDDEN, d_sae=D_SAE, architecture="standard", layer=layer, hook_name=f"blocks.{layer}.hook_resid_post"))
    with torch.no_grad():
        sae.W_dec.copy_(q[:D_SAE])
        sae.W_enc.copy_(q[:D_SAE].T)
        sae.b_enc.zero_()
        if bias_j is not None:
            sae.b_enc[PLANTED] = bias_j
    sae.requires_grad_(False)
    return sae


@pytest.fixture(scope="module")
def planted(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    base_model = tiny.tiny_llama(tok, layers=4, hidden=HIDDEN, seed=3)
    base_model.config.mlp_bias = True
    # rebuild with MLP biases (zero), identical weights otherwise
    from transformers import LlamaForCausalLM

    with_bias = LlamaForCausalLM(base_model.config).eval()
    sd = base_model.state_dict()
    missing = with_bias.load_state_dict(sd, strict=False).missing_keys
    assert all(k.endswith("bias") for k in missing)
    with torch.no_grad():
        for k in missing:
            with_bias.get_parameter(k).zero_()
    tiny.save(with_bias, tok, root / "base")
    # bias for latent j: large enough that its pre-activation stays positive on every token, so
    # ReLU is linear there and the mean moves by exactly alpha
    sae_mid = _orthonormal_sae(LAYER, seed=11)
    with torch.no_grad():
        d_j = sae_mid.W_dec[PLANTED].clone()
        with_bias.model.layers[LAYER].mlp.down_proj.bias.copy_(ALPHA * d_j)
    tiny.save(with_bias, tok, root / "ft")
    saes = SAESet({1: _orthonormal_sae(1, seed=7), LAYER: _orthonormal_sae(LAYER, seed=11, bias_j=50.0), 3: _orthonormal_sae(3, seed=13)})
    base = alignment.load_model(root / "base")
    ft = alignment.load_model(root / "ft")
    report = alignment.compare_models(base, ft, saes, probes=["finance", "general"], metrics=["drift"], config=alignment.AuditConfig(max_prompts_per_set=12, max_new_tokens=12))
    return report


def test_planted_latent_ranks_first_with_expected_ratio(planted):
    top = planted.top_features(layer=LAYER, k=3)
    assert top[0].latent == PLANTED and top[0].significant
    f = top[0]
    assert f.ft_mean - f.base_mean == pytest.approx(ALPHA, rel=1e-4)
    table = planted.drift_table(LAYER)
    untouched = next(t for t in table if t.latent != PLANTED and t.base_mean > 0)
    assert untouched.drift_ratio == pytest.approx(1.0, abs=1e-5)
    mean_base = sum(t.base_mean for t in table) / len(table)
    epsilon = planted.config.smoothing * mean_base
    assert f.drift_ratio == pytest.approx((f.base_mean + ALPHA + epsilon) / (f.base_mean + epsilon), rel=1e-6)


def test_no_other_latent_of_that_layer_moves(planted):
    others = [t for t in planted.drift_table(LAYER) if t.latent != PLANTED]
    assert max(abs(t.ft_mean - t.base_mean) for t in others) < 1e-4
    assert not any(t.significant for t in others)


def test_layers_before_the_change_show_zero_drift(planted):
    by_layer = {ld.layer: ld for ld in planted.layers}
    assert by_layer[1].drift == pytest.approx(0.0, abs=1e-7)
    assert by_layer[1].n_significant_latents == 0
    assert by_layer[LAYER].drift > 0.05  # the planted shift is large relative to the residual
    assert planted.max_drift_layer.layer in (LAYER, 3)


def test_summary_names_the_drift(planted):
    text = planted.summary()
    assert "Drift detected at layer" in text
    assert f"#{PLANTED}" in text
    assert "not computed" in text  # no risk scoring in this audit: said plainly, no made-up number
