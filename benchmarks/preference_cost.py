"""Cost of the preference read (rule 2's matched pairs) with each prompt read once per pair, against
one reply per row as before (``reply_logprobs(..., share_prompts=False)``, the pre-registered
implementation's arithmetic).

On the embedded base model (SmolLM2-135M-Instruct), every `--every`-th pair of rule 2's 528 (both
replies of each), read both ways in interleaved rounds, the order alternating, because this
machine's speed drifts; each round's ratio, the medians and the largest difference between the two
reads (nats per token, float rounding) are printed. The full read is 528 pairs per model: the
ratio carries over, the seconds scale with the pairs.

    python benchmarks/preference_cost.py [--rounds 3] [--every 8] [--threads 1]
"""

from __future__ import annotations

import argparse
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
    print(f"{len(seqs) // 2} pairs of {len(pairs.seqs) // 2}, {len(seqs)} replies, {tokens} tokens one reply per row, "
          f"{tokens - shared} with each prompt once; {args.threads} thread(s)")
    times: dict[bool, list[float]] = {False: [], True: []}
    reads: dict[bool, np.ndarray] = {}
    for r in range(args.rounds):
        for share in ((False, True) if r % 2 == 0 else (True, False)):
            t = time.perf_counter()
            reads[share] = reply_logprobs(model, seqs, pad, share_prompts=share)
            times[share].append(time.perf_counter() - t)
        print(f"round {r + 1}: one reply per row {times[False][-1]:.1f} s, each prompt once {times[True][-1]:.1f} s, "
              f"ratio {times[True][-1] / times[False][-1]:.2f}")
    alone, once = statistics.median(times[False]), statistics.median(times[True])
    print(f"median: one reply per row {alone:.1f} s, each prompt once {once:.1f} s, ratio {once / alone:.2f}; "
          f"largest difference {np.abs(reads[True] - reads[False]).max():.1e} nats per token")


if __name__ == "__main__":
    main()
