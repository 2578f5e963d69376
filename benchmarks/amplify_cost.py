"""Cost of model-diff amplified generation against the own-response generation it sits beside.

On the embedded demo pair (SmolLM2-135M-Instruct and the shipped LoRA adapter), the same prompts
are answered (a) greedily by the fine-tune alone, as the audit's own read does
(``probes.response_sequences``), and (b) by ``amplify.amplified_responses`` (for this LoRA: one
forward per step over both sides' rows, the base rows run without the adapter), with the same
length and token budget, neither cached. One resident PEFT model serves both. Rounds are
interleaved, the order alternating, because this machine's speed drifts; the ratio of each round
and the medians are printed. Target (issue 18): amplified <= 1.6x own. Two more variants time the
fallback strategy, two forwards per step with the base side's adapter switched off, by the adapter
layers' flags (``strategy='two_forwards'``) and by peft's own ``disable_adapter()`` (``strategy='disable_adapter'``).

    python benchmarks/amplify_cost.py [--rounds 3] [--probes finance,medical] [--max-prompts 12] [--alpha 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from neuronlens import alignment
from neuronlens.amplify import amplified_responses, supports_mixed_batch
from neuronlens.config import AuditConfig
from neuronlens.demo import default_pair
from neuronlens.probes import load_probe_set, response_sequences

TARGET = 1.6


Answers = list[tuple[int, ...]]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def parse_args() -> argparse.Namespace:
    cfg = AuditConfig()
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--probes", default="finance,medical")
    ap.add_argument("--max-prompts", type=int, default=12, help="prompts per set")
    ap.add_argument("--alpha", type=float, default=2.0)
    ap.add_argument("--max-new-tokens", type=int, default=cfg.max_new_tokens)
    ap.add_argument("--token-budget", type=int, default=cfg.token_budget)
    ap.add_argument("--two-forward-variants", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the amplified generation with two forwards per step (adapter flags; disable_adapter())")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); 1 on a busy machine, where two threads waiting on "
                         "each other made a 576x576 linear take 11 ms")
    return ap.parse_args()


def make_variants(args: argparse.Namespace) -> dict[str, Callable[[], Answers]]:
    """own / amplified (default strategy) / the two-forward fallbacks, on one resident PEFT model."""
    base_src, ft_src = default_pair()
    base, ft = alignment.load_model(base_src), alignment.load_model(ft_src)
    sets = [load_probe_set(p, args.max_prompts) for p in args.probes.split(",")]
    n, budget = args.max_new_tokens, args.token_budget
    ft.model  # noqa: B018 - one resident PEFT model (base weights + adapter) for both generations
    print(f"{sum(len(s.prompts) for s in sets)} prompts ({args.probes}, {args.max_prompts} each), {n} new tokens, "
          f"alpha {args.alpha}, token budget {budget}, {torch.get_num_threads()} threads; default strategy for this "
          f"adapter: {'one mixed-adapter batch' if supports_mixed_batch(ft.model) else 'two forwards'}", flush=True)

    def own() -> Answers:
        return [s.response_ids for s in response_sequences(ft, sets, n, token_budget=budget, use_cache=False)]

    def amplified(strategy: str = "auto") -> Callable[[], Answers]:
        def run() -> Answers:
            seqs = amplified_responses(base, ft, sets, alpha=args.alpha, max_new_tokens=n, token_budget=budget,
                                       use_cache=False, strategy=strategy)
            return [s.response_ids for s in seqs]
        return run

    variants = {"own": own, "amplified": amplified()}
    if args.two_forward_variants:
        variants["amplified, 2 forwards (flags)"] = amplified("two_forwards")
        variants["amplified, 2 fwd (disable_adapter)"] = amplified("disable_adapter")
    return variants


def run_rounds(variants: dict[str, Callable[[], Answers]], rounds: int) -> dict[str, list[float]]:
    """Seconds per variant and round, after one warm-up call each (whose answers are compared: every
    amplified strategy must give the same tokens); the order alternates by round."""
    first = {name: fn() for name, fn in variants.items()}  # warm-up (tokenizer, weight layout, the adapter's pre-check)
    amplified = [a for name, a in first.items() if name != "own"]
    print(f"amplified strategies give the same answers: {all(a == amplified[0] for a in amplified)}", flush=True)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
            dt, answers = timed(variants[name])
            times[name].append(dt)
            tokens = sum(len(a) for a in answers)
            print(f"round {r + 1} {name:>34}: {dt:6.1f} s  {tokens} answer tokens  {tokens / dt:5.1f} tok/s", flush=True)
    return times


def report(times: dict[str, list[float]]) -> None:
    own_med = statistics.median(times["own"])
    for name, ts in times.items():
        ratios = [t / o for t, o in zip(ts, times["own"])]
        print(f"{name:>34}: median {statistics.median(ts):6.1f} s  rounds {[round(x, 1) for x in ts]}  "
              f"ratio per round {[round(x, 2) for x in ratios]}  ratio of medians {statistics.median(ts) / own_med:.2f}x")
    ratio = statistics.median(times["amplified"]) / own_med
    print(f"amplified / own: {ratio:.2f}x (target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'})")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report(run_rounds(make_variants(args), args.rounds))


if __name__ == "__main__":
    main()
