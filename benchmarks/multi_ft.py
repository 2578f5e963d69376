"""Cost of each extra fine-tune in a multi-fine-tune audit against a cold single audit (issue 22).

On SmolLM2-135M-Instruct (materialised once from the embedded GGUF into a safetensors folder, so
every timed run can start from an empty NeuronLens cache) with the shipped SAEs at the default
layers, three "checkpoints" of one run:

    checkpoint-100   the demo LoRA adapter with its B matrices halved   (PEFT, shares the base weights)
    checkpoint-200   the demo LoRA adapter as shipped                    (PEFT)
    checkpoint-300   the demo adapter merged into the base, saved whole   (full weights)

Timed, each in a fresh cache holding only the concept associations of this base and SAEs (measured
once first, and timed: a first audit of a new base pays them too, see "fully cold" below):

    single cold, adapter    compare_models(base, checkpoint-200)
    multi                   compare_many(base, [100, 200, 300]); each report's finish time is taken
                            (on_report), so each fine-tune's own cost is the gap since the previous one
    single cold, full       compare_models(base, checkpoint-300)
    single warm             compare_models(base, checkpoint-100) in the first run's cache: a second
                            separate command, everything of the base cached (responses, concepts,
                            base pass) - what running the checkpoints one command at a time costs

The extra fine-tunes of the multi audit are checkpoint-200 (adapters go first, so the first one,
checkpoint-100, carries the base half) and checkpoint-300. Ratios: cold single / extra fine-tune,
like for like (adapter with adapter, full with full). Target: >= 1.8x. The machine is shared and
its speed drifts: only ratios inside one run mean anything; the load average is printed.

    python benchmarks/multi_ft.py [--max-prompts 4] [--probes finance,medical,...] [--threads N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from neuronlens import alignment
from neuronlens.demo import default_pair
from neuronlens.risk import prepare_risk

TARGET = 1.8
NAMES = ("checkpoint-100", "checkpoint-200", "checkpoint-300")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-prompts", type=int, default=4, help="prompts per probe set")
    ap.add_argument("--probes", default=None, help="comma-separated probe sets (default: every built-in set)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on this busy 2-core machine two threads made generation several times slower)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the models and caches go (default: a temp folder, removed); kept, a second run reuses its models "
                         "and concept associations")
    return ap.parse_args()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def build_checkpoints(root: Path) -> tuple[Path, alignment.SAESet, dict[str, Path]]:
    """The base as a safetensors folder, the shipped SAEs, and the three checkpoints (untimed;
    kept from an earlier run in the same --workdir)."""
    base_src, adapter_src = default_pair()
    alias = alignment.load_model(base_src)
    saes = alignment.load_sae(alias, train=False)
    base_dir, ckpts = root / "base", {n: root / "ckpts" / n for n in NAMES}
    if not (ckpts["checkpoint-300"] / "config.json").is_file():
        shutil.rmtree(root / "ckpts", ignore_errors=True)
        _build(alias, adapter_src, base_dir, ckpts)
    return base_dir, saes, ckpts


def _build(alias: Any, adapter_src: str, base_dir: Path, ckpts: dict[str, Path]) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    alias.model.save_pretrained(base_dir, safe_serialization=True)
    alias.tokenizer.save_pretrained(base_dir)
    alias.release()
    for name, scale in (("checkpoint-100", 0.5), ("checkpoint-200", 1.0)):
        shutil.copytree(adapter_src, ckpts[name])
        cfg_path = ckpts[name] / "adapter_config.json"
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "base_model_name_or_path": str(base_dir)}))
        weights = ckpts[name] / "adapter_model.safetensors"
        tensors = {k: (v * scale if "lora_B" in k else v) for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(weights))
    base_h = alignment.load_model(base_dir)
    merged = PeftModel.from_pretrained(base_h.model, str(ckpts["checkpoint-200"])).merge_and_unload()
    merged.save_pretrained(ckpts["checkpoint-300"], safe_serialization=True)
    base_h.tokenizer.save_pretrained(ckpts["checkpoint-300"])
    base_h.release()


def use_cache(folder: Path, seed: Path | None = None) -> None:
    """Point NeuronLens at `folder` (a fresh copy of `seed`: the concept associations only)."""
    if seed is not None:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(seed, folder)
    os.environ["NEURONLENS_CACHE"] = str(folder)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="nl-multi-ft-")) if args.workdir is None else args.workdir
    root.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    try:
        base_dir, saes, ckpts = build_checkpoints(root)
        cfg = alignment.AuditConfig(max_prompts_per_set=args.max_prompts, **({"probes": args.probes.split(",")} if args.probes else {}))
        print(f"SmolLM2-135M float32, shipped SAEs at layers {saes.layers}, {len(cfg.probes)} probe sets x {args.max_prompts} prompts, "
              f"{cfg.max_new_tokens} new tokens, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores", flush=True)
        t_assoc = None
        if not (root / "seed").is_dir():  # kept from an earlier run in the same --workdir: not timed again
            use_cache(root / "seed.tmp")
            t_assoc, _ = timed(lambda: prepare_risk(alignment.load_model(base_dir), saes, saes.layers, cfg.concepts))
            (root / "seed.tmp").rename(root / "seed")
            print(f"concept associations of this base and SAEs (cold, once): {t_assoc:.1f} s", flush=True)
        results = timed_runs(root, base_dir, saes, ckpts, cfg)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    summarise(results, t_assoc, load0, os.getloadavg())


def timed_runs(root: Path, base_dir: Path, saes: Any, ckpts: dict[str, Path], cfg: Any) -> dict[str, Any]:
    def single(name: str) -> float:
        dt, rep = timed(lambda: alignment.compare_models(str(base_dir), str(ckpts[name]), saes, config=cfg))
        print(f"single {name}: {dt:.1f} s (verdict {rep.verdict})", flush=True)
        return dt

    out: dict[str, Any] = {}
    use_cache(root / "cache-1", root / "seed")
    out["cold_adapter"] = single("checkpoint-200")
    use_cache(root / "cache-2", root / "seed")
    done: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    alignment.compare_many(str(base_dir), [str(ckpts[n]) for n in NAMES], saes, config=cfg,
                           on_report=lambda i, rep: done.append((NAMES[i], time.perf_counter())))
    out["multi_wall"] = time.perf_counter() - t0
    marks = [t0] + [t for _, t in done]
    out["gaps"] = {name: t - prev for (name, t), prev in zip(done, marks)}
    print("multi: " + ", ".join(f"{n} done after {g:.1f} s" for n, g in out["gaps"].items()) + f"; {out['multi_wall']:.1f} s in all", flush=True)
    use_cache(root / "cache-3", root / "seed")
    out["cold_full"] = single("checkpoint-300")
    use_cache(root / "cache-1")
    out["warm_adapter"] = single("checkpoint-100")
    out["first"] = done[0][0]
    return out


def summarise(r: dict[str, Any], t_assoc: float | None, load0: tuple[float, ...], load1: tuple[float, ...]) -> None:
    gaps, first = r["gaps"], r["first"]
    print(f"\nload average (1/5/15 min) at start {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, at end {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f}")
    print(f"multi audit of 3: {r['multi_wall']:.1f} s; {first} (first, with the base half) {gaps[first]:.1f} s")
    print(f"{'':34s} {'cold single':>12s} {'extra in multi':>15s} {'ratio':>7s} {'ratio, fully cold':>18s}")
    for label, cold, name in (("adapter (checkpoint-200)", r["cold_adapter"], "checkpoint-200"),
                              ("full weights (checkpoint-300)", r["cold_full"], "checkpoint-300")):
        extra = gaps[name]
        ratio = cold / extra
        fully = "not timed" if t_assoc is None else f"{(cold + t_assoc) / extra:.2f}x"
        print(f"{label:34s} {cold:10.1f} s {extra:13.1f} s {ratio:6.2f}x {fully:>18s}  "
              f"(target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'})")
    print(f"single warm (a second command, base cached), adapter: {r['warm_adapter']:.1f} s = "
          f"{r['warm_adapter'] / gaps['checkpoint-200']:.2f}x the extra adapter in the multi audit")


if __name__ == "__main__":
    main()
