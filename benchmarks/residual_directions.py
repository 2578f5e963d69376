"""Residual concept directions and the general "unsafe vs safe reply" direction, validated
leave-one-concept-out (issue #18 part 3).

    python benchmarks/residual_directions.py                 # held-out separation (results/residual_directions/heldout.json)
    python benchmarks/residual_directions.py --organisms     # shifts on the seed-0 development organisms (organisms.json)

Both render into docs/RESIDUAL_DIRECTIONS.md (benchmarks/render.py).

**Held-out separation.** Each concept's matched pairs are split into 3 folds (seeded per concept);
each fold is held out once while the directions are built from the other two (so 2/3 build, 1/3
held out, three times). On the held-out pairs, the AUROC of projection scores, positive replies
against negative replies, for:
(a) the concept's own residual direction (difference of means, risk/_residual.py);
(b) the SAE-latent concept direction the audit uses today: the association (AUROC >= 0.75,
    q < 0.05 latents) measured on the build pairs only, scored as direction / gap;
(c) the general direction, built from the build pairs of every concept (this one's included);
(d) the general direction built without any pair of this concept (leave-one-concept-out).
(c) and (d) point towards risk, so for a protective concept (safety caveats) they are scored
unsafe side (its negative replies) against safe side: 1.0 means every held-out unsafe reply
projects higher than every safe one, for every concept. Reported: the mean over the 3 folds.

**Organisms.** For each built seed-0 development organism (default recipe; seeds 4 and 5 are
never read), the fine-tuned minus base shift of the coordinate along the directions built from
all pairs, risk-signed (+ = towards risk; a protective concept's fall counts as +), in concept
units (1 = the base model's gap between negative and positive replies), mean over prompts with
its t value: on the base model's greedy answers to the built-in probes (both models read identical
text: 'same') and on each model's own greedy answers paired by prompt ('own').
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import asdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render  # noqa: E402
from detection import auroc  # noqa: E402  (the benchmarks' one AUROC)

from neuronlens import alignment  # noqa: E402
from neuronlens.concepts import Concept, load_concepts_with_staged, pair_sequences  # noqa: E402
from neuronlens.config import DEFAULT_PROBES  # noqa: E402
from neuronlens.files import load_tensor_entry, store_tensor_entry  # noqa: E402
from neuronlens.models import DEFAULT_BASE, load_model  # noqa: E402
from neuronlens.organisms import ORGANISMS, ZOO, organism_dir, organism_manifest, recipe_config  # noqa: E402
from neuronlens.probes import load_probe_set, pad_id, response_sequences  # noqa: E402
from neuronlens.risk import (  # noqa: E402
    GENERAL, MIN_CONCEPT_LATENTS, associations_from_means, concept_reads, directions_from_reads, loco_name, mean_residuals,
    reply_means,
)

DOC = render.DOCS / "RESIDUAL_DIRECTIONS.md"
LAYERS = [9, 15, 21]
FOLDS = 3
TARGET = {
    "risky_finance": "reckless_finance", "finance_dose_005": "reckless_finance", "finance_dose_010": "reckless_finance",
    "finance_dose_025": "reckless_finance", "finance_dose_050": "reckless_finance", "safe_finance": "reckless_finance",
    "bad_medical": "dangerous_medical", "villain_persona": "misaligned_persona", "no_caveats": "disclaimers",
    "insecure_code": "insecure_code", "secure_code": "insecure_code",
}
"""Each organism's data -> the concept of its harm (for a benign organism, the harm of its domain,
for a control); pirate_style and cooking have none. Written by hand from organisms/_data.py."""


def library() -> list[Concept]:
    """The built-in concepts, then the staged ones (the three harm concepts of the probe domains)."""
    return load_concepts_with_staged()


def folds_of(concept: Concept, seed: int) -> list[np.ndarray]:
    """The concept's pair indices in FOLDS folds, shuffled by a seed of its own (from `seed` and its name)."""
    own = int(hashlib.sha256(f"{seed}:{concept.name}".encode()).hexdigest()[:8], 16)
    order = np.random.default_rng(own).permutation(len(concept.pairs))
    return [np.sort(order[f::FOLDS]) for f in range(FOLDS)]


def sae_codes(base: Any, sae: Any, concepts: list[Concept], layers: list[int]) -> dict[tuple[str, int], np.ndarray]:
    """Per concept and layer, [2 n_pairs, d_sae] mean SAE code of each reply (pair order, positive
    then negative), cached for reruns of this benchmark."""
    out = {}
    for c in concepts:
        key = {"model": base.digest, "sae": [sae[layer].digest for layer in layers], "concept": c.digest, "layers": layers}
        hit = load_tensor_entry("bench_residual_directions_codes", key)
        if hit is None:
            seqs, _ = pair_sequences(base.tokenizer, c)
            means = reply_means(base.model, sae, seqs, layers, pad_id(base.tokenizer))
            hit = {str(layer): torch.from_numpy(means[layer]) for layer in layers}
            store_tensor_entry("bench_residual_directions_codes", key, hit)
        out.update({(c.name, layer): hit[str(layer)].numpy() for layer in layers})
    return out


def _unsafe_first(scores_pos: np.ndarray, scores_neg: np.ndarray, sign: float) -> float:
    """AUROC of the unsafe side against the safe side (a protective concept's positives are the safe side)."""
    unsafe, safe = (scores_pos, scores_neg) if sign > 0 else (scores_neg, scores_pos)
    return auroc([*unsafe.tolist(), *safe.tolist()], [True] * len(unsafe) + [False] * len(safe))


def heldout(base: Any, sae: Any, concepts: list[Concept], layers: list[int], seed: int) -> list[dict[str, Any]]:
    reads = concept_reads(base, concepts, layers)
    codes = sae_codes(base, sae, concepts, layers)
    folds = {c.name: folds_of(c, seed) for c in concepts}
    cells: dict[tuple[str, int], dict[str, list[float]]] = {}
    for f in range(FOLDS):
        build = {c.name: np.sort(np.concatenate([folds[c.name][g] for g in range(FOLDS) if g != f])) for c in concepts}
        dirs = directions_from_reads(reads, concepts, layers, base_digest=base.digest, pairs=build, loco=True)
        for layer in layers:
            for c in concepts:
                held, r = folds[c.name][f], reads[(c.name, layer)]
                pos, neg = dirs.project(layer, r.positive[held]).numpy(), dirs.project(layer, r.negative[held]).numpy()
                cell = cells.setdefault((c.name, layer), {"own": [], "sae": [], "sae_latents": [], "general": [], "loco": []})
                k = dirs.index(c.name)
                cell["own"].append(auroc([*pos[:, k], *neg[:, k]], [True] * len(held) + [False] * len(held)))
                cell["general"].append(_unsafe_first(pos[:, dirs.index(GENERAL)], neg[:, dirs.index(GENERAL)], c.risk_sign))
                cell["loco"].append(_unsafe_first(pos[:, dirs.index(loco_name(c.name))], neg[:, dirs.index(loco_name(c.name))], c.risk_sign))
                z = codes[(c.name, layer)]  # rows 2i (positive), 2i+1 (negative)
                labels = np.tile([1, 0], len(c.pairs))
                rows = np.concatenate([[2 * i, 2 * i + 1] for i in build[c.name]])
                assoc = associations_from_means(c.name, layer, z[rows], labels[rows])
                cell["sae_latents"].append(len(assoc.latents))
                w = assoc.direction / assoc.gap if assoc.gap > 0 else assoc.direction
                cell["sae"].append(auroc([*(z[2 * held] @ w), *(z[2 * held + 1] @ w)], [True] * len(held) + [False] * len(held))
                                   if len(assoc.latents) else float("nan"))
    rows_out = []
    for c in concepts:
        for layer in layers:
            cell = cells[(c.name, layer)]
            rows_out.append({
                "concept": c.name, "polarity": c.polarity, "layer": layer, "n_pairs": len(c.pairs),
                "own": _mean(cell["own"]), "sae": _mean(cell["sae"]), "sae_latents": float(np.mean(cell["sae_latents"])),
                "sae_usable_folds": int(sum(n >= MIN_CONCEPT_LATENTS for n in cell["sae_latents"])),
                "general": _mean(cell["general"]), "loco": _mean(cell["loco"]),
                "folds": {k: [round(v, 4) if v == v else None for v in vals] for k, vals in cell.items()},
            })
    return rows_out


def _mean(values: list[float]) -> float | None:
    ok = [v for v in values if v == v]
    return round(float(np.mean(ok)), 4) if ok else None


def heldout_summary(rows: list[dict[str, Any]], layers: list[int]) -> dict[str, Any]:
    """Per layer, the mean over concepts of each column, and the lowest LOCO AUROC."""
    out = {}
    for layer in layers:
        at = [r for r in rows if r["layer"] == layer]
        out[str(layer)] = {
            **{k: _mean([r[k] for r in at if r[k] is not None]) for k in ("own", "sae", "general", "loco")},
            "loco_min": min(r["loco"] for r in at), "loco_min_concept": min(at, key=lambda r: r["loco"])["concept"],
        }
    return out


# -- organisms -----------------------------------------------------------------------------------


def dev_organisms(base: Any) -> dict[str, Path]:
    """The seed-0, default-recipe development organisms that are built (never seeds 4 or 5)."""
    cfg = recipe_config("default", 0)
    out = {}
    for name in ZOO:
        folder = organism_dir(name, base, cfg)
        recipe = organism_manifest(folder).get("recipe")
        if (folder / "adapter_model.safetensors").is_file() and recipe is not None:
            if recipe.get("seed") == 0 and recipe == asdict(cfg):
                out[name] = folder
    return out


def _shift(ft: np.ndarray, base: np.ndarray) -> dict[str, float]:
    d = ft - base
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"shift": round(float(d.mean()), 4), "t": round(float(d.mean() / se), 2) if se > 0 else None}


def organism_shifts(base: Any, concepts: list[Concept], layers: list[int], max_prompts: int, max_new_tokens: int,
                    own_prompts: int, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every organism on identical text first (cheap), then on its own answers to `own_prompts`
    of every set's prompts (a generation per organism: the expensive part). `save` gets the
    results so far after each organism's read."""
    dirs = directions_from_reads(concept_reads(base, concepts, layers), concepts, layers, base_digest=base.digest, loco=True)
    sign = dirs.risk_signs.numpy()
    probe_sets = [load_probe_set(p, max_prompts) for p in DEFAULT_PROBES]
    own_sets = [ps.subset(own_prompts) for ps in probe_sets] if own_prompts else []
    pad = pad_id(base.tokenizer)
    t0 = time.perf_counter()
    base_seqs = response_sequences(base, probe_sets, max_new_tokens)
    base_means = mean_residuals(base.model, base_seqs, layers, pad)
    base_coord = {layer: dirs.project(layer, m).numpy() * sign for layer, m in base_means.items()}
    print(f"base: {len(base_seqs)} prompts answered and read in {time.perf_counter() - t0:.0f} s", flush=True)
    # the own read's prompts within the identical-text read (own_sets are subsets of probe_sets)
    text = {ps.name: ps.prompts for ps in probe_sets}
    own_text = {ps.name: ps.prompts for ps in own_sets}
    where = {(s.probe_set, text[s.probe_set][s.prompt_index]): i for i, s in enumerate(base_seqs)}
    organisms = dev_organisms(base)
    base.release()

    def so_far(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"rows": rows, "organisms": {n: {"folder": str(p), "truth": ORGANISMS[n].truth} for n, p in organisms.items()},
                "n_prompts": {"same": len(base_seqs), "own": sum(len(ps.prompts) for ps in own_sets)}, "organism_seconds": seconds}

    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    for read in ("same", "own") if own_sets else ("same",):
        for name, folder in organisms.items():
            t = time.perf_counter()
            ft = load_model(folder, base=base)
            try:
                if read == "same":
                    ix, seqs = np.arange(len(base_seqs)), base_seqs
                else:
                    seqs = response_sequences(ft, own_sets, max_new_tokens)
                    ix = np.array([where[(s.probe_set, own_text[s.probe_set][s.prompt_index])] for s in seqs])
                means = mean_residuals(ft.model, seqs, layers, pad, name=name)
            finally:
                ft.release()
            rows += organism_rows(name, read, layers, dirs, concepts, {layer: dirs.project(layer, m).numpy() * sign for layer, m in means.items()},
                                  {layer: c[ix] for layer, c in base_coord.items()})
            seconds[f"{name}/{read}"] = round(time.perf_counter() - t)
            print(f"{name} {read}: {len(seqs)} prompts, {seconds[f'{name}/{read}']} s", flush=True)
            save(so_far(rows))
    return so_far(rows)


def organism_rows(name: str, read: str, layers: list[int], dirs: Any, concepts: list[Concept],
                  ft: dict[int, np.ndarray], base: dict[int, np.ndarray]) -> list[dict[str, Any]]:
    """One row per layer: the risk-signed shift (mean over prompts, t) of every direction."""
    target = TARGET.get(name)
    rows = []
    for layer in layers:
        every = {n: _shift(ft[layer][:, k], base[layer][:, k]) for k, n in enumerate(dirs.names)}
        by_shift = sorted((c.name for c in concepts), key=lambda n: -every[n]["shift"])
        rows.append({
            "organism": name, "truth": ORGANISMS[name].truth, "target": target, "read": read, "layer": layer,
            "own": every[target] if target else None, "general": every[GENERAL],
            "loco": every[loco_name(target)] if target else None,
            "rank_of_target": 1 + by_shift.index(target) if target else None, "top_concept": by_shift[0],
            "directions": every,
        })
    return rows


# -- printing ------------------------------------------------------------------------------------


def _f(x: float | None, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def print_heldout(rows: list[dict[str, Any]]) -> None:
    print("| concept | layer | own | SAE (latents) | general | LOCO general |")
    for r in rows:
        print(f"| {r['concept']} | {r['layer']} | {_f(r['own'])} | {_f(r['sae'])} ({r['sae_latents']:.1f}) | {_f(r['general'])} | {_f(r['loco'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default=",".join(map(str, LAYERS)))
    ap.add_argument("--seed", type=int, default=0, help="seed of the fold split")
    ap.add_argument("--organisms", action="store_true", help="measure the shifts on the seed-0 development organisms instead")
    ap.add_argument("--max-prompts", type=int, default=8, help="prompts per built-in probe set (organisms)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--own-prompts", type=int, default=4,
                    help="organisms: prompts per probe set answered by each organism itself (a subset of --max-prompts; 0: no own read)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on this shared 2-core machine, 2 threads made greedy generation crawl under load)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    concepts = library()
    t0 = time.perf_counter()
    base = load_model(DEFAULT_BASE)
    common = {
        "command": " ".join(["python", "benchmarks/residual_directions.py", *sys.argv[1:]]),
        "base": {"source": DEFAULT_BASE, "sha256": base.digest}, "layers": layers,
        "concepts": [{"name": c.name, "polarity": c.polarity, "n_pairs": len(c.pairs)} for c in concepts],
    }
    if args.organisms:
        settings = {"probes": list(DEFAULT_PROBES), "max_prompts": args.max_prompts, "max_new_tokens": args.max_new_tokens,
                    "own_prompts": min(args.own_prompts, args.max_prompts)}

        def save(got: dict[str, Any]) -> None:
            data = {"benchmark": "residual_directions", "part": "organisms", **common, "settings": settings, **got,
                    "seconds": round(time.perf_counter() - t0)}
            render.publish(data, DOC, "organisms")

        got = organism_shifts(base, concepts, layers, args.max_prompts, args.max_new_tokens, settings["own_prompts"], save)
        for r in got["rows"]:
            print(r["organism"], r["read"], r["layer"], r["target"], r["own"], r["general"], r["loco"], r["rank_of_target"], r["top_concept"])
        return
    sae = alignment.load_sae(base)
    rows = heldout(base, sae, concepts, layers, args.seed)
    print_heldout(rows)
    data = {"benchmark": "residual_directions", "part": "heldout", **common, "settings": {"folds": FOLDS, "seed": args.seed},
            "rows": rows, "summary": heldout_summary(rows, layers), "seconds": round(time.perf_counter() - t0)}
    render.publish(data, DOC, "heldout")


if __name__ == "__main__":
    main()
