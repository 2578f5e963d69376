"""What fusing a PEFT adapter's LoRA layers saves (``neuronlens.models.fused_lora``, used by the
audit's passes), measured in one run on the embedded demo pair.

    python benchmarks/lora_fused.py [--rounds 5] [--max-prompts 8]
    python benchmarks/lora_fused.py --crossover


The fine-tuned model (SmolLM2-135M with the demo's rank-8 LoRA adapter) reads the audit's padded
batches of the base model's cached answers to the default probe sets, up to the deepest audited
layer (``run_to_layers``), three ways, interleaved round by round because this machine's speed
drifts: by peft's own forward, with the LoRA layers fused as an addmm, fused and merged per call
(the default for the audit's batches), and with the adapter disabled (the base model: what the
adapter's layers cost at all). ``--crossover`` times one rank-8 layer of each of SmolLM2's shapes
both ways at growing row counts, the measurement behind ``MERGE_MIN_ROWS``. Prints the medians, the ratio peft / fused, and the
largest relative difference between the fused and peft residuals at each audited layer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from neuronlens import alignment
from neuronlens.capture import make_batches, run_to_layers
from neuronlens.config import AuditConfig
from neuronlens.demo import default_pair
from neuronlens.models import fused_lora
from neuronlens.probes import load_probe_set, response_sequences


def crossover(rank: int = 8) -> None:
    """addmm time / merged time for one LoRA layer (random weights) at growing row counts."""
    from torch.nn import functional as F

    torch.manual_seed(0)
    rows = (16, 64, 128, 256, 512, 1024, 2048)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; rank-{rank} LoRA layer, addmm time / merged time (>1: merging pays)")
    for d_in, d_out in ((576, 576), (576, 1536), (1536, 576)):
        w, a, b = torch.randn(d_out, d_in), torch.randn(rank, d_in), torch.randn(d_out, rank)
        ratios = []
        for n in rows:
            x = torch.randn(n, d_in)
            ways = {"addmm": lambda: torch.addmm(F.linear(x, w), F.linear(x, a), b.t(), alpha=2.0),
                    "merged": lambda: F.linear(x, torch.addmm(w, b, a, alpha=2.0))}
            best = {k: float("inf") for k in ways}
            reps = max(3, 20000 // n)
            for _ in range(2):
                for k, fn in ways.items():
                    t = time.perf_counter()
                    for _ in range(reps):
                        fn()
                    best[k] = min(best[k], (time.perf_counter() - t) / reps)
            ratios.append(f"{n}: {best['addmm'] / best['merged']:.2f}")
        print(f"{d_in:5d} -> {d_out:<5d} " + ", ".join(ratios))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-prompts", type=int, default=8, help="prompts per probe set (7 default probe sets)")
    ap.add_argument("--crossover", action="store_true", help="only time one layer both ways at growing row counts")
    args = ap.parse_args()
    if args.crossover:
        crossover()
        return
    base_src, ft_src = default_pair()
    base, ft = alignment.load_model(base_src), alignment.load_model(ft_src)
    cfg = AuditConfig(max_prompts_per_set=args.max_prompts)
    seqs = response_sequences(base, [load_probe_set(p, args.max_prompts) for p in cfg.probes], cfg.max_new_tokens)
    batches = list(make_batches(seqs, cfg.positions, cfg.token_budget, base.tokenizer.pad_token_id))
    layers = list(alignment.load_sae(base, cfg.layers).layers)  # the audited layers: the shipped SAEs'
    model = ft.model.eval()

    @torch.inference_mode()
    def read(how: str) -> list[dict[int, torch.Tensor]]:
        ctx = (fused_lora(model, merge_min_rows=2**62) if how == "fused" else fused_lora(model) if how == "merged"
               else model.disable_adapter() if how == "disabled" else nullcontext())
        with ctx:
            return [run_to_layers(model, b.input_ids, b.attention_mask, layers) for b in batches]

    out = {how: read(how) for how in ("peft", "fused", "merged")}  # warm-up, and the agreement
    rel = {how: {la: max(float((f[la] - p[la]).abs().max() / p[la].abs().max()) for f, p in zip(out[how], out["peft"])) for la in layers}
           for how in ("fused", "merged")}
    del out
    times: dict[str, list[float]] = {"peft": [], "fused": [], "merged": [], "disabled": []}
    for _ in range(args.rounds):
        for how in times:
            t = time.perf_counter()
            read(how)
            times[how].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {n_tokens} tokens in {len(batches)} batches, "
          f"layers {layers}; {args.rounds} interleaved rounds, medians")
    for how, label in (("peft", "peft's forward"), ("fused", "LoRA layers fused, addmm"), ("merged", "fused, merged per call (default)"),
                       ("disabled", "adapter disabled (the base model)")):
        print(f"{label:36s} {med[how]:6.2f} s   rounds {[round(x, 2) for x in times[how]]}")
    print(f"peft / fused: {med['peft'] / med['fused']:.2f}x, peft / merged: {med['peft'] / med['merged']:.2f}x; the adapter's layers "
          f"cost {med['peft'] / med['disabled'] - 1:+.1%} by peft's forward, {med['fused'] / med['disabled'] - 1:+.1%} fused, "
          f"{med['merged'] / med['disabled'] - 1:+.1%} merged")
    for how in ("fused", "merged"):
        print(f"largest relative difference, {how} vs peft residuals: " + ", ".join(f"layer {la} {r:.1e}" for la, r in rel[how].items()))


if __name__ == "__main__":
    main()
