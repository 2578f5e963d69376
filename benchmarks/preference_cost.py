"""Cost of the preference read (rule 2's matched pairs) with each prompt read once per pair, and
with the prefix every prompt shares (the chat template's system prompt and turn header) read once
into a KV cache, against one reply per row as before (``reply_logprobs(..., share_prompts=False)``,
the pre-registered implementation's arithmetic).

On the embedded base model (SmolLM2-135M-Instruct), every `--every`-th pair of rule 2's 528 (both
replies of each), read the three ways in interleaved rounds, the order rotating, because this
machine's speed drifts; each round's ratios to one reply per row, the medians and the largest
difference from it (nats per token, float rounding) are printed. The full read is 528 pairs per model: the
ratio carries over, the seconds scale with the pairs.

    python benchmarks/preference_cost.py [--rounds 3] [--every 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from neuronlens.models import DEFAULT_BASE, load_model
from neuronlens.preference import PairSet, reply_logprobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--every", type=int, default=8, help="read every N-th pair of the 528")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    handle = load_model(DEFAULT_BASE)
    model, pad = handle.model.eval(), handle.tokenizer.pad_token_id or 0
    pairs = PairSet.build(handle.tokenizer)
    seqs = [s for k in range(0, len(pairs.seqs), 2 * args.every) for s in pairs.seqs[k:k + 2]]
    tokens = sum(len(s) for s in seqs)
    shared = sum(len(s.prompt_ids) for s in seqs[::2])
    prefix = os.path.commonprefix([list(s.prompt_ids) for s in seqs])
    print(f"{len(seqs) // 2} pairs of {len(pairs.seqs) // 2}, {len(seqs)} replies, {tokens} tokens one reply per row, "
          f"{tokens - shared} with each prompt once, {tokens - shared - len(prefix) * len(seqs) // 2} with the {len(prefix)} tokens "
          f"every prompt starts with read once; {args.threads} thread(s)")
    modes = {"one reply per row": {"share_prompts": False}, "each prompt once": {"share_prefix": False},
             "each prompt once, shared prefix cached": {}}
    times: dict[str, list[float]] = {m: [] for m in modes}
    reads: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        order = list(modes)[r % len(modes):] + list(modes)[: r % len(modes)]
        for mode in order:
            t = time.perf_counter()
            reads[mode] = reply_logprobs(model, seqs, pad, **modes[mode])
            times[mode].append(time.perf_counter() - t)
        base = times["one reply per row"][-1]
        print(f"round {r + 1}: " + ", ".join(f"{m} {times[m][-1]:.1f} s ({times[m][-1] / base:.2f}x)" for m in modes))
    median = {m: statistics.median(v) for m, v in times.items()}
    alone = reads["one reply per row"]
    print("median: " + ", ".join(f"{m} {median[m]:.1f} s ({median[m] / median['one reply per row']:.2f}x)" for m in modes)
          + "; largest difference from one reply per row "
          + ", ".join(f"{np.abs(reads[m] - alone).max():.1e}" for m in list(modes)[1:]) + " nats per token")

if __name__ == "__main__":
    main()
