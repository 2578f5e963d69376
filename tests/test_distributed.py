"""Data-parallel audits: `torchrun --nproc_per_node=2 -m neuronlens audit` against one process on
tiny models (same sums up to summation order, same report, one writer), and the pieces it is
made of: key reconciliation with an empty shard, sharded response caching, evidence merging,
collectives on a one-rank gloo group, launch detection."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
from conftest import random_sae
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
from neuronlens.probes import ProbeSet, response_sequences
from neuronlens.risk import EvidenceStore
from neuronlens.saes import save_saelens
from neuronlens.stats import AuditSums

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# -- torchrun x2 against one process ------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tok) -> dict[str, Path]:
    """A tiny Llama, a perturbed copy (a shift shared by every token embedding drifts latents
    consistently, so some are significant) and random SAEs at layers 1 and 2."""
    root = tmp_path_factory.mktemp("dp")
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


def _audit(pair: dict[str, Path], out: Path, cache: Path, nproc: int) -> subprocess.CompletedProcess[str]:
    # 5 prompts per set: the ranks' shards differ in size. --token-budget 16 (the minimum) puts
    # every sequence in a batch of its own, in generation too, so batch composition - which can
    # move float32 rounding and the per-batch massive-activation median - is the same in both runs.
    args = [
        "-m", "neuronlens", "audit", "--base", str(pair["base"]), "--ft", str(pair["ft"]), "--sae", str(pair["saes"]),
        "--layers", "1,2", "--probes", "finance,legal", "--max-prompts", "5", "--max-new-tokens", "6",
        "--token-budget", "16", "--out", str(out), "--no-progress",
    ]
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"] if nproc > 1 else []
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", NEURONLENS_CACHE=str(cache))
    return subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, env=env, timeout=300)


def _sidecar(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "report.stats.safetensors"))


@pytest.mark.slow
def test_two_ranks_give_the_single_process_report(tmp_path, pair):
    cache = tmp_path / "cache"
    two = _audit(pair, tmp_path / "out2", cache, nproc=2)
    # rank 0 exits with the audit's code (1: a random tiny SAE leaves the verdict inconclusive),
    # the other ranks with 0, so torchrun never stops rank 0 early; torchrun lists the failed ranks
    # and exits 1 itself. Rank 1, if still shutting down when rank 0 exits, is stopped (-15).
    assert two.returncode == 1, two.stderr[-3000:]
    codes = dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", two.stderr))
    assert codes.get("0") == "1" and set(codes) <= {"0", "1"} and codes.get("1", "-15") == "-15", two.stderr[-3000:]
    assert not re.search(r'File ".*/neuronlens/|^(\[rank \d\] )?Error:', two.stderr, re.M), two.stderr[-3000:]  # no rank failed
    # the sharded run cached each rank's responses under its own key, never as a whole set's
    keys = [json.loads(p.read_text())["key"] for p in (cache / "responses").glob("*.json")]
    assert sorted(tuple(k.get("shard", ())) for k in keys) == [(0, 2)] * 4 + [(1, 2)] * 4  # 2 models x 2 sets

    one = _audit(pair, tmp_path / "out1", cache, nproc=1)
    assert one.returncode == 1, one.stderr[-3000:]

    # one writer, one summary, and the summary is the single-process one
    assert two.stdout.count("Post-finetuning audit summary:") == 1 and two.stderr.count("Written:") == 1
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["report.json", "report.stats.safetensors"]
    assert two.stdout == one.stdout
    assert re.search(r"Significantly drifted latents: L1 [1-9]\d*/128", one.stdout), one.stdout

    # the float64 sums agree up to summation order, key for key (latents, residual, concepts; both reads)
    s1, s2 = _sidecar(tmp_path / "out1"), _sidecar(tmp_path / "out2")
    assert s1.keys() == s2.keys() and any(k.startswith("latent|own|") for k in s1) and any(k.startswith("concept|") for k in s1)
    for k in s1:
        scale = float(s1[k].abs().max()) if s1[k].numel() else 0.0
        torch.testing.assert_close(s2[k], s1[k], rtol=1e-9, atol=1e-12 * max(scale, 1.0), msg=k)
    # prompt counts are exact: every prompt paired with its own base read ('own' p_diff) once
    for k in s1:
        if k.endswith(("|n_base", "|n_ft", "|p_base", "|p_ft", "|p_diff", "|n")):
            assert torch.equal(s1[k], s2[k]), k
    assert all(float(s1[k]) == 5 for k in s1 if k.startswith("latent|own|") and k.endswith("|p_diff"))

    r1, r2 = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("out1", "out2"))
    assert r1["probe_sets"] == r2["probe_sets"] and r1["config"] == r2["config"] and r1["reads"] == r2["reads"] == ["same", "own"]
    for l1, l2 in zip(r1["layers"], r2["layers"], strict=True):
        assert (l1["layer"], l1["n_tokens"], l1["n_significant_latents"]) == (l2["layer"], l2["n_tokens"], l2["n_significant_latents"])
        assert l2["drift"] == pytest.approx(l1["drift"], rel=1e-9)
        assert l2["by_probe"] == pytest.approx(l1["by_probe"], rel=1e-9)
    for layer, feats in r1["top_features"].items():
        other = r2["top_features"][layer]
        assert [(f["latent"], f["significant"]) for f in feats] == [(f["latent"], f["significant"]) for f in other]
        assert [f["drift_ratio"] for f in other] == pytest.approx([f["drift_ratio"] for f in feats], rel=1e-9)
    assert r1["risk"]["verdict"] == r2["risk"]["verdict"] and r1["risk"]["score"] == r2["risk"]["score"]


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


def test_collectives_on_a_one_rank_gloo_group(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        dp = DataParallel(0, 1)
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
