"""Data-parallel audits: `torchrun --nproc_per_node=2 -m neuronlens audit` against one process on
tiny models (same sums up to summation order, same report, one writer), and the pieces it is
made of: key reconciliation with an empty shard, sharded response caching, evidence merging,
collectives on a one-rank gloo group (and nccl where there is a GPU), launch detection."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import LAUNCH_VARS, audit_cli, sidecar
from neuronlens import alignment
from neuronlens._distributed import (
    DataParallel,
    flat_layout,
    launch_from_env,
    merge_evidence,
    pack_flat,
    union_layout,
    unpack_flat,
)
from neuronlens.errors import ConfigError, DistributedError
from neuronlens.learned import neutral_prompts
from neuronlens.pipeline import AUDIT_LENS
from neuronlens.probes import ProbeSet, response_sequences
from neuronlens.risk import EvidenceStore
from neuronlens.stats import AuditSums

# -- torchrun x2 against one process ------------------------------------------------------------


@pytest.mark.slow
def test_two_ranks_give_the_single_process_report(tmp_path, perturbed_pair):
    cache = tmp_path / "cache"
    two = audit_cli(perturbed_pair, tmp_path / "out2", cache, nproc=2, extra=("--device", "cpu", "--amplify-alpha", "1"))  # gloo, also where CUDA is
    # rank 0 exits with the audit's code (1: a random tiny SAE leaves the verdict inconclusive),
    # the other ranks with 0, so torchrun never stops rank 0 early; torchrun lists the failed ranks
    # and exits 1 itself. Rank 1, if still shutting down when rank 0 exits, is stopped (-15).
    assert two.returncode == 1, two.stderr[-3000:]
    codes = dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", two.stderr))
    assert codes.get("0") == "1" and set(codes) <= {"0", "1"} and codes.get("1", "-15") == "-15", two.stderr[-3000:]
    assert not re.search(r'File ".*/neuronlens/|^(\[rank \d\] )?Error:', two.stderr, re.M), two.stderr[-3000:]  # no rank failed
    # the sharded run cached each rank's responses under its own key, never as a whole set's
    keys = [json.loads(p.read_text())["key"] for p in (cache / "responses").glob("*.json")]
    lens_texts = neutral_prompts().subset(AUDIT_LENS.n_texts).digest  # the lens's texts: whole, once, by rank 0
    assert [tuple(k.get("shard", ())) for k in keys if k["probe_set"] == lens_texts] == [()]
    keys = [k for k in keys if k["probe_set"] != lens_texts]
    assert sorted(tuple(k.get("shard", ())) for k in keys) == [(0, 2)] * 4 + [(1, 2)] * 4  # 2 models x 2 sets
    amplified = [json.loads(p.read_text())["key"] for p in (cache / "amplified").glob("*.json")]
    assert sorted(tuple(k.get("shard", ())) for k in amplified) == [(0, 2)] * 2 + [(1, 2)] * 2  # 1 pair x 2 sets

    one = audit_cli(perturbed_pair, tmp_path / "out1", cache, nproc=1, extra=("--device", "cpu", "--amplify-alpha", "1"))
    assert one.returncode == 1, one.stderr[-3000:]

    # one writer, one summary, and the summary is the single-process one
    assert two.stdout.count("Post-finetuning audit summary:") == 1 and two.stderr.count("Written:") == 1
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["report.json", "report.stats.safetensors"]
    assert two.stdout == one.stdout
    assert re.search(r"Significantly drifted latents: L1 [1-9]\d*/128", one.stdout), one.stdout

    # the float64 sums agree key for key (latents, residual, concepts; both reads) up to summation
    # order and to the float32 codes themselves: each rank's batches hold other prompts, so the
    # GEMMs block differently and a code may differ in its last bits on some CPUs' kernels
    s1, s2 = sidecar(tmp_path / "out1"), sidecar(tmp_path / "out2")
    assert s1.keys() == s2.keys() and any(k.startswith("latent|own|") for k in s1) and any(k.startswith("concept|") for k in s1)
    for k in s1:
        scale = float(s1[k].abs().max()) if s1[k].numel() else 0.0
        torch.testing.assert_close(s2[k], s1[k], rtol=1e-5, atol=1e-6 * max(scale, 1.0), msg=k)
    # prompt counts are exact: every prompt paired with its own base read ('own' p_diff) once
    for k in s1:
        if k.endswith(("|n_base", "|n_ft", "|p_base", "|p_ft", "|p_diff", "|n")):
            assert torch.equal(s1[k], s2[k]), k
    assert all(float(s1[k]) == 5 for k in s1 if k.startswith("latent|own|") and k.endswith("|p_diff"))

    r1, r2 = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("out1", "out2"))
    assert r1["probe_sets"] == r2["probe_sets"] and r1["config"] == r2["config"] and r1["reads"] == r2["reads"] == ["same", "own", "amplified"]
    for l1, l2 in zip(r1["layers"], r2["layers"], strict=True):
        assert (l1["layer"], l1["n_tokens"], l1["n_significant_latents"]) == (l2["layer"], l2["n_tokens"], l2["n_significant_latents"])
        assert l2["drift"] == pytest.approx(l1["drift"], rel=1e-6)
        assert l2["by_probe"] == pytest.approx(l1["by_probe"], rel=1e-6)
    for layer, feats in r1["top_features"].items():
        other = r2["top_features"][layer]
        assert [(f["latent"], f["significant"]) for f in feats] == [(f["latent"], f["significant"]) for f in other]
        assert [f["drift_ratio"] for f in other] == pytest.approx([f["drift_ratio"] for f in feats], rel=1e-6)
    assert r1["risk"]["verdict"] == r2["risk"]["verdict"] and r1["risk"]["score"] == pytest.approx(r2["risk"]["score"], rel=1e-6, abs=1e-9)
    assert r2["learned"] is not None and r1["learned"] == r2["learned"]  # rank 0's lens, cached for the second run


# -- the pieces ---------------------------------------------------------------------------------


def _sums(probes: list[str], seed: int) -> AuditSums:
    g = torch.Generator().manual_seed(seed)
    sums = AuditSums.empty()
    for probe in probes:
        codes = torch.rand(6, 8, generator=g)
        prompt = torch.tensor([0, 0, 1, 1, 2, 2])
        sums.latent("same", 1, probe, 8).add_paired(codes, codes + 0.1 * torch.rand(6, 8, generator=g), prompt)
        sums.resid(1, probe).add(torch.rand(6, 4, generator=g), torch.rand(6, 4, generator=g))
    return sums


def test_key_reconciliation_with_an_empty_shard():
    """Rank 1's shard of 'legal' measured nothing, so it lacks those keys: it still adds zeros
    under them, and the packed sum is exactly the merged sums."""
    rank0, rank1 = _sums(["finance", "legal"], 0), _sums(["finance"], 1)
    flats = [rank0.to_flat(), rank1.to_flat()]
    layout = union_layout([flat_layout(f) for f in flats])
    assert set(flats[1]) < set(layout) and list(layout) == sorted(layout)
    reduced = AuditSums.from_flat(unpack_flat(pack_flat(flats[0], layout) + pack_flat(flats[1], layout), layout))
    expected = rank0.merge(rank1).to_flat()
    got = reduced.to_flat()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    with pytest.raises(DistributedError, match="shape"):
        union_layout([{"latent|same|1|x|base_sum": (8,)}, {"latent|same|1|x|base_sum": (16,)}])


def test_sharded_responses_keep_prompt_indices_and_cache_per_shard(tiny_base_dir, monkeypatch):
    import neuronlens.probes._responses as responses

    handle = alignment.load_model(tiny_base_dir)
    ps = ProbeSet("p", ("What is a bond?", "Is rent deductible?", "Define equity.", "How do loans work?", "What is APR?"), "test")
    kw = dict(token_budget=16)  # one prompt per generation batch: shards generate what the full set does
    shards = [response_sequences(handle, [ps], 4, shard=(r, 2), **kw) for r in range(2)]
    assert [s.prompt_index for s in shards[0]] == [0, 2, 4] and [s.prompt_index for s in shards[1]] == [1, 3]

    def no_generation(*a, **k):
        raise AssertionError("generated although cached")

    monkeypatch.setattr(responses, "generate_greedy", no_generation)
    again = response_sequences(handle, [ps], 4, shard=(1, 2), **kw)  # its own entry
    assert again == shards[1]
    with pytest.raises(AssertionError, match="generated"):  # a shard's entry never passes for the whole set
        response_sequences(handle, [ps], 4, **kw)
    with pytest.raises(AssertionError, match="generated"):  # nor for another world size's shard
        response_sequences(handle, [ps], 4, shard=(1, 3), **kw)
    monkeypatch.undo()
    full = response_sequences(handle, [ps], 4, **kw)
    assert sorted(shards[0] + shards[1], key=lambda s: s.prompt_index) == full
    monkeypatch.setattr(responses, "generate_greedy", no_generation)
    assert response_sequences(handle, [ps], 4, shard=(1, 3), **kw) == [full[1], full[4]]  # read from the full set's entry
    assert response_sequences(handle, [ProbeSet("q", ps.prompts[:2], "test")], 4, shard=(2, 3), **kw) == []  # empty shard


def _store(records: list[tuple[str, int]], seed: int = 0) -> EvidenceStore:
    store = EvidenceStore(prompts={"a": ("a0", "a1", "a2"), "b": ("b0", "b1")})
    for probe, i in records:
        g = torch.Generator().manual_seed(10 * ord(probe[0]) + i + seed)
        codes = torch.relu(torch.randn(3, 6, generator=g))
        store.add("same", 1, probe, i, [5, 6, 7], codes, codes + (0.5 if (probe, i) == ("b", 1) else 0.0))
    return store


def test_merged_evidence_is_the_single_process_evidence():
    everything = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    single = _store([everything[i] for i in (3, 0, 4, 2, 1)])  # batch order, not prompt order
    single.sort_records()
    parts = [_store(everything[0::2]).records, _store(everything[1::2]).records]
    merged = merge_evidence(single.prompts, parts)
    assert [(r.probe_set, r.prompt_index) for r in merged.records[("same", 1)]] == everything
    for latent in range(6):
        top = merged.top_contexts("same", 1, latent, k=2)
        assert top == single.top_contexts("same", 1, latent, k=2)
    assert merged.top_contexts("same", 1, 0, k=1)[0].prompt == "b1"


@pytest.mark.parametrize(
    "backend",
    ["gloo", pytest.param("nccl", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="nccl needs a CUDA device"))],
)
def test_collectives_on_a_one_rank_group(tmp_path, backend):
    """The collectives' own code on a real process group: with nccl the buffers must live on the
    rank's GPU and the barrier names it, which a gloo group never checks."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    if backend == "nccl":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        dp = DataParallel(0, 1, 0, "cuda:0" if backend == "nccl" else "cpu")
        sums = _sums(["finance", "legal"], 0)
        reduced = dp.all_reduce_sums(sums).to_flat()
        flat = sums.to_flat()
        assert reduced.keys() == flat.keys() and all(torch.equal(reduced[k], flat[k]) for k in flat)
        store = _store([("b", 1), ("a", 0)])
        gathered = dp.gather_evidence(store)  # sparse codes survive the pickling
        assert [(r.probe_set, r.prompt_index) for r in gathered.records[("same", 1)]] == [("a", 0), ("b", 1)]
        assert torch.equal(gathered.records[("same", 1)][1].ft.to_dense(), store.records[("same", 1)][0].ft.to_dense())
        dp.check_same("inputs", {"base": "x"})
        assert dp.shard(list(range(5))) == [0, 1, 2, 3, 4]
        dp.barrier()
    finally:
        dist.destroy_process_group()


def test_launch_detection(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    assert launch_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not"):
        launch_from_env()
    for var, value in (("RANK", "1"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match="same GPU"):
        launch_from_env("cuda:0")
    dp = DataParallel(1, 2, 1, "cuda:1")
    assert dp.shard("abcde") == ["b", "d"] and dp.model_device("auto") == "cuda:1" and dp.model_device("cpu") == "cpu"
    assert DataParallel(1, 2).model_device("auto") == "auto"
