"""What fusing a PEFT adapter's LoRA layers saves (``neuronlens.models.fused_lora``, used by the
audit's passes), measured in one run on the embedded demo pair.

    python benchmarks/lora_fused.py [--rounds 5] [--max-prompts 8]

The fine-tuned model (SmolLM2-135M with the demo's rank-8 LoRA adapter) reads the audit's padded
batches of the base model's cached answers to the default probe sets, up to the deepest audited
layer (``run_to_layers``), three ways, interleaved round by round because this machine's speed
drifts: by peft's own forward, with the LoRA layers fused, and with the adapter disabled (the base
model: what the adapter's layers cost at all). Prints the medians, the ratio peft / fused, and the
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-prompts", type=int, default=8, help="prompts per probe set (7 default probe sets)")
    args = ap.parse_args()
    base_src, ft_src = default_pair()
    base, ft = alignment.load_model(base_src), alignment.load_model(ft_src)
    cfg = AuditConfig(max_prompts_per_set=args.max_prompts)
    seqs = response_sequences(base, [load_probe_set(p, args.max_prompts) for p in cfg.probes], cfg.max_new_tokens)
    batches = list(make_batches(seqs, cfg.positions, cfg.token_budget, base.tokenizer.pad_token_id))
    layers = list(alignment.load_sae(base, cfg.layers).layers)  # the audited layers: the shipped SAEs'
    model = ft.model.eval()

    @torch.inference_mode()
    def read(how: str) -> list[dict[int, torch.Tensor]]:
        ctx = fused_lora(model) if how == "fused" else model.disable_adapter() if how == "disabled" else nullcontext()
        with ctx:
            return [run_to_layers(model, b.input_ids, b.attention_mask, layers) for b in batches]

    peft_out, fused_out = read("peft"), read("fused")  # warm-up, and the agreement
    rel = {la: max(float((f[la] - p[la]).abs().max() / p[la].abs().max()) for f, p in zip(fused_out, peft_out)) for la in layers}
    del peft_out, fused_out
    times: dict[str, list[float]] = {"peft": [], "fused": [], "disabled": []}
    for _ in range(args.rounds):
        for how in times:
            t = time.perf_counter()
            read(how)
            times[how].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {n_tokens} tokens in {len(batches)} batches, "
          f"layers {layers}; {args.rounds} interleaved rounds, medians")
    for how, label in (("peft", "peft's forward"), ("fused", "LoRA layers fused"), ("disabled", "adapter disabled (the base model)")):
        print(f"{label:36s} {med[how]:6.2f} s   rounds {[round(x, 2) for x in times[how]]}")
    print(f"peft / fused: {med['peft'] / med['fused']:.2f}x; the adapter's layers cost {med['peft'] / med['disabled'] - 1:+.1%} "
          f"by peft's forward, {med['fused'] / med['disabled'] - 1:+.1%} fused")
    print("largest relative difference, fused vs peft residuals: " + ", ".join(f"layer {la} {r:.1e}" for la, r in rel.items()))


if __name__ == "__main__":
    main()
