"""The large-model run of issue #22 part 3, ready for the day a GPU machine is at hand: an
8B-shaped Llama (Llama-3-8B's layer shapes, random init, bfloat16) and a perturbed full-weight copy,
audited end to end with random 16k-latent TopK SAEs at three layers, then a LoRA adapter on the same
base, then the amplified read's cost. One command, prepared and tested on CPU at a tiny shape:

    python benchmarks/gpu_scale.py --json results/gpu_scale/h100.json             # GPU: 8b, bfloat16, cuda
    python benchmarks/gpu_scale.py --shape tiny --device cpu --dtype float32       # the same steps in seconds

What it records (printed as JSON; with --json also written there):
- ``floor``: a plain forward of the base model over the audit's own batches to the deepest audited
  layer (no LM head, no hooks, no SAE: benchmarks/_floor.py), median of 3; both models cost the
  same per token (same shapes), so the pair's floor is twice it;
- ``audit_full`` / ``audit_adapter``: the audit's passes (base_pass_s + ft_pass_s, base responses
  cached, no base-pass cache) against that floor (``x_floor``, tokens/s), the whole audit's timings,
  and its peak accelerator memory against ``one_model`` (the base model and its SAEs loaded and one
  floor forward run; target: audit <= 1.2x);
- ``amplified``: the adapter audit again with ``amplify_alpha=2``: its amplified read's seconds
  against the own read's in the first adapter audit (which generated the own answers; the second
  finds them cached).

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (reset before each row), the process's
peak RSS (VmHWM) on CPU. The tokenizer is a byte-level BPE trained on the probe prompts (the GPU
machine has no model tokenizer), so the vocabulary, and the LM head used only by generation, are
small: the decoder blocks, which the passes run, have the 8B shapes. The weights are random, so the
verdict means nothing (random SAEs leave it inconclusive); the layer drift shows the perturbation
was seen. Checkpoints are built once under --work and reused (8b in bfloat16: ~7.0B parameters with
the 4,096-token vocabulary, about 14 GB each for base and copy, plus the adapter).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _floor import floor_pass  # noqa: E402
from tiny import tiny_tokenizer  # noqa: E402  (tests/tiny.py: a byte-level BPE trained on the probe prompts)

from neuronlens import alignment  # noqa: E402
from neuronlens.capture import make_batches  # noqa: E402
from neuronlens.config import AuditConfig, default_layers  # noqa: E402
from neuronlens.probes import load_probe_set, response_sequences  # noqa: E402

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
}
def build(work: Path, shape: str, dtype: torch.dtype, device: str, layers: list[int], d_sae: int) -> dict[str, Path]:
    """Base, perturbed full-weight copy, LoRA adapter and SAEs under `work` (once; a marker says complete)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from neuronlens.saes import SAEInfo, SparseAutoencoder, save_saelens

    paths = {k: work / k for k in ("base", "ft", "adapter", "saes")}
    done = work / "built.json"
    spec = {"shape": shape, "dtype": str(dtype), "layers": layers, "d_sae": d_sae}
    if done.is_file() and json.loads(done.read_text()) == spec:
        return paths
    tok = tiny_tokenizer(4096 if shape != "tiny" else 400)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype).eval()
    for name, folder in (("base", paths["base"]), ("ft", paths["ft"])):
        if name == "ft":  # the "fine-tune": every MLP down-projection from a quarter of the depth on, moved by 5% of its std
            with torch.no_grad():
                for block in model.model.layers[cfg.num_hidden_layers // 4:]:
                    w = block.mlp.down_proj.weight
                    w.add_(0.05 * w.float().std().to(w.dtype) * torch.randn_like(w))
        model.save_pretrained(folder, max_shard_size="2GB")
        tok.save_pretrained(folder)
    del model
    with torch.device(device):
        base = LlamaForCausalLM.from_pretrained(paths["base"], dtype=dtype)
    peft = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.peft_config["default"].base_model_name_or_path = str(paths["base"])
    peft.save_pretrained(paths["adapter"])
    del peft, base
    g = torch.Generator().manual_seed(0)
    for layer in layers:
        sae = SparseAutoencoder(SAEInfo(d_in=cfg.hidden_size, d_sae=d_sae, architecture="topk", layer=layer,
                                        hook_name=f"blocks.{layer}.hook_resid_post", k=32))
        with torch.no_grad():
            sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, cfg.hidden_size, generator=g), dim=-1))
            sae.W_enc.copy_(sae.W_dec.T)
        save_saelens(sae, paths["saes"] / f"layer_{layer}")
    done.write_text(json.dumps(spec))
    return paths


def peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def audit_row(base, ft, sae, cfg: AuditConfig, device: str, floor_s: float, n_tokens: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """One audit: its passes against the pair's floor, its timings and its peak memory."""
    peak_reset(device)
    rep = alignment.compare_models(base, ft, sae, config=cfg, cache_base_pass=False)
    passes = rep.timings["base_pass_s"] + rep.timings["ft_pass_s"]
    return {"passes_s": passes, "tokens_per_s": 2 * n_tokens / passes, "x_floor": 2 * floor_s / passes,
            "peak_gib": peak_gib(device), "timings": rep.timings, "layer_drift": {d.layer: d.drift for d in rep.layers},
            "verdict": rep.risk.verdict if rep.risk is not None else None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtype = getattr(torch, args.dtype)
    n_layers = SHAPES[args.shape]["num_hidden_layers"]
    layers = default_layers(n_layers)  # 30/50/70% of depth, as an audit picks: 10, 16, 22 of 32
    work = args.work or Path("neuronlens-out") / f"gpu-scale-{args.shape}-{args.dtype}"
    t = time.perf_counter()
    paths = build(work, args.shape, dtype, args.device, layers, args.d_sae)
    out: dict[str, Any] = {"shape": args.shape, "dtype": args.dtype, "device": args.device, "layers": layers, "d_sae": args.d_sae,
                           "card": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                           "build_s": time.perf_counter() - t}
    cfg = AuditConfig(max_prompts_per_set=args.max_prompts, max_new_tokens=args.max_new_tokens, layers=layers,
                      concepts=args.concepts.split(",") if args.concepts else None)
    load = dict(device=args.device, dtype=args.dtype)
    peak_reset(args.device)
    base = alignment.load_model(paths["base"], lazy=False, **load)
    sae = alignment.load_sae(base, layers, source=str(paths["saes"]))
    seqs = response_sequences(base, [load_probe_set(p, cfg.max_prompts_per_set) for p in cfg.probes], cfg.max_new_tokens)
    batches = [dataclasses.replace(b, input_ids=b.input_ids.to(args.device), attention_mask=b.attention_mask.to(args.device))
               for b in make_batches(seqs, cfg.positions, cfg.token_budget, base.tokenizer.pad_token_id)]
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)
    floor_t = []
    for _ in range(3):
        t = time.perf_counter()
        floor_pass(base.model, batches, max(layers) + 1)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        floor_t.append(time.perf_counter() - t)
    floor_s = statistics.median(floor_t)
    out["one_model"] = {"peak_gib": peak_gib(args.device)}
    out["floor"] = {"seconds": floor_s, "tokens": n_tokens, "tokens_per_s": n_tokens / floor_s, "rounds": floor_t}
    base.release()
    ft, adapter = alignment.load_model(paths["ft"], **load), alignment.load_model(paths["adapter"], base=base, **load)
    out["audit_full"] = audit_row(base, ft, sae, cfg, args.device, floor_s, n_tokens)
    out["audit_adapter"] = audit_row(base, adapter, sae, cfg, args.device, floor_s, n_tokens)
    amp = audit_row(base, adapter, sae, dataclasses.replace(cfg, amplify_alpha=2.0), args.device, floor_s, n_tokens)
    own_s = out["audit_adapter"]["timings"]["ft_own_pass_s"]  # generated there; the amplified audit finds them cached
    out["amplified"] = {"amplified_pass_s": amp["timings"]["amplified_pass_s"], "own_pass_s": own_s,
                        "x_own": amp["timings"]["amplified_pass_s"] / own_s, "peak_gib": amp["peak_gib"]}
    one = out["one_model"]["peak_gib"]
    for row in ("audit_full", "audit_adapter"):
        out[row]["x_one_model"] = out[row]["peak_gib"] / one if one else float("nan")
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="8b")
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--dtype", default="bfloat16" if cuda else "float32", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--max-prompts", type=int, default=8, help="prompts per probe set")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--concepts", default=None, help="comma-separated built-in concepts (default: all)")
    ap.add_argument("--work", type=Path, default=None, help="where the checkpoints are built (default neuronlens-out/gpu-scale-SHAPE-DTYPE)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    out = run(args)
    text = json.dumps(out, indent=1, default=float)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
