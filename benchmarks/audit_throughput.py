"""Audit throughput against its floor, measured in one run on the embedded demo pair.

Floor: a plain Hugging Face forward of both models over the same tokens up to the deepest audited
layer, without the LM head (the decoder blocks run as a truncated ModuleList, no hooks, no SAE).
Audit: NeuronLens's two passes (base, then fine-tuned) with capture, SAE encoding, statistics and
evidence, on the same tokens. Base responses and concept associations are cached beforehand, so
both sides do exactly the forward work. Rounds are interleaved (floor, audit, floor, ...) because
this machine's speed drifts; medians are reported. The compute ceiling is the floor's FLOPs at
the float32 matmul rate measured in the same run.

    python benchmarks/audit_throughput.py [--rounds 3] [--max-prompts 24]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from neuronlens import alignment
from neuronlens.capture import make_batches
from neuronlens.config import AuditConfig
from neuronlens.demo import default_pair
from neuronlens.models import fused_lora
from neuronlens.probes import load_probe_set, response_sequences

from _floor import floor_pass  # benchmarks/_floor.py (the script's folder is on sys.path)


def compute_ceiling(model: torch.nn.Module, batches: list, n_blocks: int) -> tuple[float, float, float]:
    """(seconds, GFLOP, GFLOP/s): the time one model's pass over `batches` to block `n_blocks - 1`
    would take at this machine's dense float32 matmul rate, measured now on the MLP's own GEMM
    shape. FLOPs count every padded position: 2 x the blocks' matrix parameters per position,
    plus 4 x T x d_model per position per block for attention scores and their weighted sum."""
    blocks = (model.get_base_model().model if hasattr(model, "get_base_model") else model.model).layers[:n_blocks]
    matrix_params = sum(p.numel() for p in blocks.parameters() if p.dim() == 2)
    d_model, d_ff = model.config.hidden_size, model.config.intermediate_size
    flops = 0.0
    for b in batches:
        n_pos, t = b.input_ids.numel(), b.input_ids.shape[1]
        flops += 2 * matrix_params * n_pos + 4 * t * d_model * n_pos * n_blocks
    a, w = torch.randn(max(b.input_ids.numel() for b in batches), d_model), torch.randn(d_model, d_ff)
    a @ w
    t0, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ w
    rate = 2 * a.shape[0] * d_model * d_ff * reps / (time.perf_counter() - t0)
    return flops / rate, flops / 1e9, rate / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-prompts", type=int, default=AuditConfig.max_prompts_per_set)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    base_src, ft_src = default_pair()
    base = alignment.load_model(base_src)
    ft = alignment.load_model(ft_src)
    cfg = AuditConfig(max_prompts_per_set=args.max_prompts)
    sae = alignment.load_sae(base, cfg.layers)
    probe_sets = [load_probe_set(p, cfg.max_prompts_per_set) for p in cfg.probes]
    seqs = response_sequences(base, probe_sets, cfg.max_new_tokens)
    batches = list(make_batches(seqs, cfg.positions, cfg.token_budget, base.tokenizer.pad_token_id))
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)
    deepest = max(sae.layers) + 1
    base_nn = base.model
    from peft import PeftModel

    # warm-up (also fills the concept-association cache)
    alignment.compare_models(base, ft, sae, config=cfg, cache_base_pass=False)
    def floor(fused: bool) -> float:
        t = time.perf_counter()
        floor_pass(base_nn, batches, deepest)
        pm = PeftModel.from_pretrained(base_nn, str(ft.path))
        pm.eval()
        with fused_lora(pm) if fused else nullcontext():
            floor_pass(pm, batches, deepest)
        pm.unload()
        return time.perf_counter() - t

    floor_t, fused_t, audit_t = [], [], []
    for _ in range(args.rounds):
        floor_t.append(floor(fused=False))
        rep = alignment.compare_models(base, ft, sae, config=cfg, cache_base_pass=False)
        audit_t.append(rep.timings["base_pass_s"] + rep.timings["ft_pass_s"])
        fused_t.append(floor(fused=True))
    f, ff, a = statistics.median(floor_t), statistics.median(fused_t), statistics.median(audit_t)
    print(f"tokens per model: {n_tokens}  (layers {sae.layers}, {len(seqs)} sequences, {torch.get_num_threads()} threads)")
    print(f"floor (plain forward of both models to layer {deepest - 1}, no LM head; the adapter by peft's forward): "
          f"{f:.1f} s  {2 * n_tokens / f:.0f} tok/s  1.00x")
    print(f"floor with the adapter's LoRA layers fused as the audit runs them (models.fused_lora): {ff:.1f} s  {2 * n_tokens / ff:.0f} tok/s  {f / ff:.2f}x")
    print(f"NeuronLens audit passes (capture + SAE + statistics + evidence):  {a:.1f} s  {2 * n_tokens / a:.0f} tok/s  {f / a:.2f}x "
          f"({ff / a:.2f}x the fused floor)")
    print(f"rounds: floor {[round(x, 1) for x in floor_t]}, fused floor {[round(x, 1) for x in fused_t]}, audit {[round(x, 1) for x in audit_t]}")
    ceil_s, gflop, rate = compute_ceiling(base_nn, batches, deepest)
    print(f"compute ceiling (both models, {gflop:.0f} GFLOP each at the {rate:.0f} GFLOP/s measured for one "
          f"[{max(b.input_ids.numel() for b in batches)} x {base_nn.config.hidden_size}] @ [{base_nn.config.hidden_size} x "
          f"{base_nn.config.intermediate_size}] float32 GEMM): {2 * ceil_s:.1f} s; floor at {2 * ceil_s / f:.0%} of it, "
          f"audit passes at {2 * ceil_s / a:.0%}")
    print(f"full default audit incl. loading and risk: {rep.timings['total_s']:.1f} s  {rep.timings}")


if __name__ == "__main__":
    main()
