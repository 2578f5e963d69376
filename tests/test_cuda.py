"""The audit on a GPU, checked against the CPU on the same tiny pair: greedy responses, float64
sums and report agree; a bfloat16 model still sums in float64; torchrun asks for one GPU per
rank (nccl) and says so when there are too few.

Skipped where torch sees no CUDA device (CI and this project's CPU machines, where
tests/test_distributed.py covers the gloo path). On a GPU machine:
`pytest tests/test_cuda.py tests/test_distributed.py` (the latter adds a one-rank nccl group)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import audit_cli, sidecar

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"), pytest.mark.slow]


def _responses(cache: Path) -> dict[str, list[list[int]]]:
    """Cached greedy responses by (model, probe set), as token ids."""
    out = {}
    for path in (cache / "responses").glob("*.json"):
        entry = json.loads(path.read_text())
        out[f"{entry['key']['model']}|{entry['key']['probe_set']}"] = entry["payload"]
    return out


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _assert_same_audit(a: Path, b: Path, *, rtol: float) -> None:
    """Same token and prompt counts exactly; float64 sums, layer drift and verdict within `rtol`."""
    sa, sb = sidecar(a), sidecar(b)
    assert sa.keys() == sb.keys() and any(k.startswith("latent|own|") for k in sa)
    for k in sa:
        assert sb[k].dtype == torch.float64, k
        if k.endswith(("|n_base", "|n_ft", "|p_base", "|p_ft", "|p_diff", "|n")):
            assert torch.equal(sa[k], sb[k]), k
        else:
            scale = float(sa[k].abs().max()) if sa[k].numel() else 0.0
            torch.testing.assert_close(sb[k], sa[k], rtol=rtol, atol=rtol * max(scale, 1e-6), msg=k)
    ra, rb = _report(a), _report(b)
    for la, lb in zip(ra["layers"], rb["layers"], strict=True):
        assert la["n_tokens"] == lb["n_tokens"]
        assert lb["drift"] == pytest.approx(la["drift"], rel=rtol)
    assert ra["risk"]["verdict"] == rb["risk"]["verdict"]
    assert rb["risk"]["score"] == pytest.approx(ra["risk"]["score"], rel=rtol, abs=1e-9)


def test_cuda_audit_matches_the_cpu_audit(tmp_path, perturbed_pair):
    """Each run generates its own responses (separate caches): float32 greedy decoding on the GPU
    gives the CPU's tokens, and the sums agree to float32 rounding of the forward passes."""
    cpu = audit_cli(perturbed_pair, tmp_path / "cpu", tmp_path / "cache-cpu", extra=("--device", "cpu"))
    gpu = audit_cli(perturbed_pair, tmp_path / "gpu", tmp_path / "cache-gpu", extra=("--device", "cuda"))
    assert cpu.returncode == gpu.returncode == 1, gpu.stderr[-3000:]  # random SAEs: inconclusive
    assert _responses(tmp_path / "cache-gpu") == _responses(tmp_path / "cache-cpu")
    _assert_same_audit(tmp_path / "cpu", tmp_path / "gpu", rtol=1e-4)
    assert gpu.stdout.count("Post-finetuning audit summary:") == 1


def test_bfloat16_on_cuda_sums_in_float64(tmp_path, perturbed_pair):
    """A bfloat16 audit reading the float32 run's cached responses (the response cache does not
    depend on dtype; the base statistics do, and are recomputed): the same tokens, float64 sums,
    and layer drift within bfloat16's precision of the float32 audit."""
    cache = tmp_path / "cache"
    f32 = audit_cli(perturbed_pair, tmp_path / "f32", cache, extra=("--device", "cuda", "--dtype", "float32"))
    bf16 = audit_cli(perturbed_pair, tmp_path / "bf16", cache, extra=("--device", "cuda", "--dtype", "bfloat16"))
    assert f32.returncode == bf16.returncode == 1, bf16.stderr[-3000:]
    a, b = _report(tmp_path / "f32"), _report(tmp_path / "bf16")
    assert [la["n_tokens"] for la in a["layers"]] == [lb["n_tokens"] for lb in b["layers"]]
    assert all(t.dtype == torch.float64 for t in sidecar(tmp_path / "bf16").values())
    for la, lb in zip(a["layers"], b["layers"], strict=True):
        assert lb["drift"] == pytest.approx(la["drift"], rel=0.1), (la["layer"], la["drift"], lb["drift"])


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="checks the one-GPU case")
def test_two_ranks_on_one_gpu_is_a_clear_error(tmp_path, perturbed_pair):
    """nccl runs one rank per GPU: a second rank on a one-GPU machine is refused by name."""
    two = audit_cli(perturbed_pair, tmp_path / "out", tmp_path / "cache", nproc=2, extra=("--device", "cuda"))
    assert two.returncode != 0
    assert "LOCAL_RANK=1 but this machine has 1 GPU(s)" in two.stderr + two.stdout, two.stderr[-3000:]
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_give_the_single_gpu_report(tmp_path, perturbed_pair):
    """torchrun on two GPUs (nccl): the all-reduced sums are the single-process ones."""
    two = audit_cli(perturbed_pair, tmp_path / "two", tmp_path / "cache", nproc=2, extra=("--device", "cuda"))
    one = audit_cli(perturbed_pair, tmp_path / "one", tmp_path / "cache", extra=("--device", "cuda"))
    assert two.returncode == one.returncode == 1, two.stderr[-3000:]
    assert two.stdout == one.stdout
    _assert_same_audit(tmp_path / "one", tmp_path / "two", rtol=1e-6)


def test_organism_lora_training_on_cuda_matches_the_cpu(tiny_base_dir):
    """`neuronlens organisms build` on a GPU machine trains where the model is: the same steps on
    the GPU and on the CPU give the same losses to float32 rounding (before the fix the batches
    stayed on the CPU and the first forward failed)."""
    from neuronlens import alignment
    from neuronlens.organisms._data import Example
    from neuronlens.organisms._train import LoRATrainConfig, train_lora

    examples = [Example(f"Question {i}?", f"Answer number {i}, with some words.") for i in range(6)]
    cfg = LoRATrainConfig(rank=2, epochs=2, batch_size=3, max_answer_tokens=8)
    losses: dict[str, list[float]] = {}
    for device in ("cpu", "cuda"):
        handle = alignment.load_model(tiny_base_dir, device=device, dtype="float32")
        seen: list[float] = []
        trained = train_lora(handle.model, handle.tokenizer, examples, cfg, on_step=lambda s, t, loss: seen.append(loss))
        assert all(p.device.type == device for p in trained.parameters() if p.requires_grad)
        losses[device] = seen
    assert len(losses["cuda"]) == 4
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-3)
