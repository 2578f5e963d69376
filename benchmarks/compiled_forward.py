"""Would a compiled forward lift the audit past its eager floor? torch.compile against eager on the
floor's own work, measured in one run.

Issue #5's 2x-over-TransformerLens and 70%-of-compute-ceiling targets both need the audit's
passes about 1.15-1.2x faster than a plain eager Hugging Face forward of the same blocks
(docs/PERFORMANCE.md). The one standard way to get a faster forward out of the same transformers
model is `torch.compile` (inductor, which fuses the norms, rotary embeddings and SiLU that keep
the eager forward below the GEMM rate). This measures it on the base model of the embedded demo
pair over the audit's own padded batches (7 probe sets x 24 prompts, the base model's cached
answers), stopped after the deepest audited layer, no LM head: the eager floor against the
compiled one (`dynamic=True`: the audit's batches have many shapes, and one compile per shape would
cost more than it saves), rounds interleaved, medians. The first compiled pass, which compiles, is
timed apart.

    python benchmarks/compiled_forward.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from neuronlens import alignment
from neuronlens.capture import make_batches
from neuronlens.config import AuditConfig, default_layers
from neuronlens.demo import default_pair
from neuronlens.probes import load_probe_set, response_sequences

from _floor import truncated  # benchmarks/_floor.py (the script's folder is on sys.path)
from audit_throughput import compute_ceiling


@torch.inference_mode()
def timed_pass(forward, batches: list) -> float:
    t = time.perf_counter()
    for b in batches:
        forward(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base_src, _ = default_pair()
    base = alignment.load_model(base_src)
    cfg = AuditConfig()
    probe_sets = [load_probe_set(p, cfg.max_prompts_per_set) for p in cfg.probes]
    seqs = response_sequences(base, probe_sets, cfg.max_new_tokens)
    batches = list(make_batches(seqs, cfg.positions, cfg.token_budget, base.tokenizer.pad_token_id))
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)
    shapes = sorted({tuple(b.input_ids.shape) for b in batches})
    deepest = max(cfg.layers or default_layers(base.n_layers)) + 1
    times: dict[str, list[float]] = {"eager": [], "whole": [], "blocks": []}
    with truncated(base.model, deepest) as inner:
        timed_pass(inner, batches)  # warm-up
        whole = torch.compile(inner, dynamic=True)
        first = {"whole": timed_pass(whole, batches)}
        eager_forwards = [blk.forward for blk in inner.layers]
        for blk in inner.layers:  # regional: each block's forward, hooks left outside (what an audit could use)
            blk.forward = torch.compile(blk.forward, dynamic=True)
        first["blocks"] = timed_pass(inner, batches)
        compiled_forwards = [blk.forward for blk in inner.layers]

        def set_blocks(forwards: list) -> None:
            for blk, fwd in zip(inner.layers, forwards):
                blk.forward = fwd

        for _ in range(args.rounds):
            set_blocks(eager_forwards)
            times["eager"].append(timed_pass(inner, batches))
            times["whole"].append(timed_pass(whole, batches))
            set_blocks(compiled_forwards)
            times["blocks"].append(timed_pass(inner, batches))
        set_blocks(eager_forwards)
        ceil_s, _, rate = compute_ceiling(base.model, batches, deepest)
    med = {k: statistics.median(v) for k, v in times.items()}
    e = med["eager"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; base model, {n_tokens} tokens in {len(batches)} "
          f"padded batches of {len(shapes)} shapes, blocks 0-{deepest - 1}, no LM head")
    names = {"eager": "eager floor", "whole": "torch.compile(decoder stack)", "blocks": "torch.compile(each block's forward)"}
    for k, label in names.items():
        extra = f"; first pass (compiles) {first[k]:.1f} s" if k in first else ""
        print(f"{label:38s} {med[k]:6.2f} s  {n_tokens / med[k]:5.0f} tok/s  {e / med[k]:.2f}x  "
              f"at {ceil_s / med[k]:.0%} of the compute ceiling ({rate:.0f} GFLOP/s){extra}")
    print(f"rounds: {{{', '.join(f'{k}: {[round(x, 2) for x in v]}' for k, v in times.items())}}}")


if __name__ == "__main__":
    main()
