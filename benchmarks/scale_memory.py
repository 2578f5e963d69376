"""Peak memory of an audit at about 1B parameters: a random-init Llama saved as sharded
safetensors, audited against a perturbed copy (a full-weight "fine-tune"), with random TopK SAEs.

Every measurement runs in its own child process, which reports its own peak RSS (VmHWM of
/proc/self/status: the high-water mark of that process's memory since it started; `ru_maxrss`
would carry over the parent's RSS at fork), so no measurement inflates another:

- imports:    python + torch + transformers + neuronlens imported, nothing loaded;
- one model:  the base model loaded (the same loader the audit uses) and its decoder run once on
              one batch of the audit's token budget (32 x 128 tokens, no LM head, as the audit's
              passes), plus the SAEs loaded: what holding and using one model costs. Safetensors
              are memory-mapped, so weights count once a forward has touched them;
- audit:      `compare_models(base, ft, ...)` with the default `keep_both=False` (one model
              resident at a time), risk scoring included;
- keep_both:  the same audit asked to keep both models resident (the contrast);
- audit warm: the audit again with the caches the cold audit filled (base responses, concept
              associations, base pass: the base weights are never loaded).

Every cold row starts from an empty NEURONLENS_CACHE of its own, so it pays for the base and
fine-tuned generations, the concept associations and both passes.

Target (issue #5): audit peak RSS <= 1.25x one model + SAEs, read as the "one model" row; the
table also gives the audit's peak above the import baseline against the weights' bytes alone. The weights are random, so the
verdict means nothing here (random SAEs make it inconclusive); the drift per layer shows that the
perturbation was seen.

    python benchmarks/scale_memory.py [--dtype bfloat16] [--work DIR] [--out docs/SCALE.md]

The checkpoints are built once under --work (default: $NEURONLENS_CACHE/scale, about 4 GB in
bfloat16) and reused. With --out the results are data, results/scale_memory/<name>.json, and the
document is rendered from it (benchmarks/render.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render  # noqa: E402  (results data and the documents rendered from it)

MIB = 2**20

# ~1.0B parameters: hidden 2048, 20 layers, MLP 5632, SmolLM2's 49,152-token vocabulary (tied).
MODEL = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=4)


def _build(work: Path, dtype: str, audit_layers: list[int], d_sae: int) -> dict[str, Path]:
    """Base, perturbed copy and SAEs under `work` (built once; a marker file says complete)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from neuronlens import alignment
    from neuronlens.saes import SAEInfo, SparseAutoencoder, save_saelens

    paths = {"base": work / f"base-{dtype}", "ft": work / f"ft-{dtype}", "saes": work / f"saes-{d_sae}"}
    done = work / f"built-{dtype}-{d_sae}-{'_'.join(map(str, audit_layers))}.json"
    if done.is_file():
        return paths
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tok = alignment.load_model("smollm2-135m-instruct").tokenizer
    torch_dtype = getattr(torch, dtype)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **MODEL)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(cfg, dtype=torch_dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(paths["base"], max_shard_size="500MB")
    tok.save_pretrained(paths["base"])
    del model
    # the "fine-tune": every decoder MLP from layer 8 on moved by 5% of its weights' std, shard by shard
    shutil.copytree(paths["base"], paths["ft"])
    g = torch.Generator().manual_seed(1)
    for shard in sorted(paths["ft"].glob("*.safetensors")):
        tensors = load_file(str(shard))
        for name, t in tensors.items():
            if ".mlp." in name and int(name.split(".layers.")[1].split(".")[0]) >= 8:
                noise = torch.randn(t.shape, generator=g) * (0.05 * t.float().std())
                tensors[name] = (t.float() + noise).to(t.dtype)
        save_file(tensors, str(shard), metadata={"format": "pt"})
    for layer in audit_layers:
        sae = SparseAutoencoder(SAEInfo(d_in=cfg.hidden_size, d_sae=d_sae, architecture="topk", k=32, layer=layer,
                                        hook_name=f"blocks.{layer}.hook_resid_post"))
        with torch.no_grad():
            sae.W_enc.normal_(0, cfg.hidden_size**-0.5, generator=g)
            sae.W_dec.copy_(sae.W_enc.T)
        save_saelens(sae, paths["saes"] / f"layer_{layer}")
    done.write_text(json.dumps({"n_params": n_params}))
    return paths


_CHILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import torch, transformers
    from neuronlens import alignment
    from neuronlens.config import AuditConfig
    what, base, ft, saes, dtype, layers, max_prompts, max_new = sys.argv[1:9]
    layers = [int(x) for x in layers.split(",")]
    out = {}
    from pathlib import Path
    loaded, _real = [], transformers.AutoModelForCausalLM.from_pretrained  # every checkpoint whose weights load
    transformers.AutoModelForCausalLM.from_pretrained = lambda where, *a, **k: loaded.append(Path(where).name) or _real(where, *a, **k)
    if what != "imports":
        b = alignment.load_model(base, dtype=dtype)
        sae = alignment.load_sae(b, layers, source=saes)
        if what == "one_model":  # loaded and used: one forward at the audit's batch size touches every weight
            n = AuditConfig.token_budget // 128
            with torch.no_grad():
                b.model.model(torch.randint(0, len(b.tokenizer), (n, 128)))
        else:
            f = alignment.load_model(ft, dtype=dtype)
            cfg = AuditConfig(layers=layers, max_prompts_per_set=int(max_prompts), max_new_tokens=int(max_new))
            rep = alignment.compare_models(b, f, sae, config=cfg, keep_both=(what == "keep_both"))
            out["weights_loaded"] = loaded
            out["layer_drift"] = {l.layer: round(l.drift, 4) for l in rep.layers}
            out["n_tokens"] = rep.layers[0].n_tokens
            out["timings"] = {k: round(v, 1) for k, v in rep.timings.items()}
    hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
    out["peak_rss_mib"] = int(hwm.split()[1]) / 1024
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(out))
""")


def _measure(what: str, paths: dict[str, Path], args: argparse.Namespace, cache: Path) -> dict:
    cmd = [sys.executable, "-c", _CHILD, what, str(paths["base"]), str(paths["ft"]), str(paths["saes"]), args.dtype,
           args.layers, str(args.max_prompts), str(args.max_new_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NEURONLENS_CACHE": str(cache)})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _bytes(folder: Path, suffix: str = ".safetensors") -> int:
    return sum(p.stat().st_size for p in folder.rglob(f"*{suffix}"))


def main() -> None:
    from neuronlens.files import cache_root

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--work", type=Path, default=None, help="Where the checkpoints are built (default: $NEURONLENS_CACHE/scale).")
    ap.add_argument("--layers", default="6,12", help="Audited layers.")
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--max-prompts", type=int, default=8, help="Prompts per probe set.")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--skip-keep-both", action="store_true")
    ap.add_argument("--out", type=Path, default=None,
                    help="Record the results: write results/scale_memory/<name>.json and render this markdown document from it.")
    args = ap.parse_args()
    work = args.work or cache_root() / "scale"
    t = time.perf_counter()
    paths = _build(work, args.dtype, [int(x) for x in args.layers.split(",")], args.d_sae)
    n_params = json.loads(next(work.glob(f"built-{args.dtype}-*.json")).read_text())["n_params"]
    print(f"checkpoints ready in {time.perf_counter() - t:.0f} s: {n_params / 1e9:.2f}B parameters, {args.dtype}", flush=True)
    model_mib, sae_mib = _bytes(paths["base"]) / MIB, _bytes(paths["saes"]) / MIB
    rows = {}
    for what in ("imports", "one_model", "audit", "audit_warm") + (() if args.skip_keep_both else ("keep_both",)):
        cache = work / f"cache-{'audit' if what == 'audit_warm' else what}"
        if what != "audit_warm":
            shutil.rmtree(cache, ignore_errors=True)
        rows[what] = _measure(what, paths, args, cache)
        print(what, json.dumps(rows[what]), flush=True)
    data = {"benchmark": "scale_memory", "command": f"python benchmarks/scale_memory.py --dtype {args.dtype}", "n_params": n_params,
            "dtype": args.dtype, "shards": len(list(paths["base"].glob("*.safetensors"))), "model_mib": model_mib, "sae_mib": sae_mib,
            "layers": [int(x) for x in args.layers.split(",")], "d_sae": args.d_sae, "max_prompts": args.max_prompts,
            "max_new_tokens": args.max_new_tokens, "processes": rows}
    print("\n" + render.rendering(data))
    if args.out:
        render.publish(data, args.out)


if __name__ == "__main__":
    main()
