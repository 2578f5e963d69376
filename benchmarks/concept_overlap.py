"""Usage: python benchmarks/concept_overlap.py [STAGED_NAMES] [BUILTIN_NAMES]  (comma lists; default: all staged, all built-in).

Run benchmarks/concept_coverage.py's own functions on concept files (it only reads the built-ins),
plus a cross-concept table: the difference-of-means residual direction fitted on ALL pairs of concept A
(standardised as in cv_linear_auroc), scoring the pairs of concept B (AUROC). Off-diagonal = overlap."""
import sys, time
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, str(Path(__file__).parent))
from concept_coverage import cv_linear_auroc, reply_reads  # noqa: E402
from detection import auroc  # noqa: E402
from neuronlens import alignment
from neuronlens.models import DEFAULT_BASE
from neuronlens.concepts import load_concepts, pair_sequences, staged_concept_paths
from neuronlens.risk import associations_from_means

torch.set_num_threads(1)
staged = [str(p) for p in staged_concept_paths()]
if len(sys.argv) > 1: staged = [s for s in staged if Path(s).stem in sys.argv[1].split(",")]
concepts = load_concepts(staged) + load_concepts(sys.argv[2].split(",") if len(sys.argv) > 2 else None)
t0 = time.time()
base = alignment.load_model(DEFAULT_BASE)
sae = alignment.load_sae(base)
layers = sorted(sae)
print("loaded", time.time() - t0, layers, flush=True)
store = {}
for c in concepts:
    seqs, labels = pair_sequences(base.tokenizer, c)
    pair = np.array([s.prompt_index for s in seqs])
    reads = reply_reads(base, sae, seqs, layers)
    store[c.name] = (reads, labels)
    if str(c.source).endswith(".json"):
        for layer in layers:
            assoc = associations_from_means(c.name, layer, reads[layer]["codes"], labels)
            best = float(np.max(np.where(assoc.pos_mean > assoc.neg_mean, assoc.auroc, 0.0)))
            cells = [cv_linear_auroc(reads[layer][k], labels, pair, 5) for k in ("residual", "reconstruction", "codes")]
            cells.append(cv_linear_auroc(reads[layer]["residual"], labels, pair, 5, tokens=reads[layer]["tokens"]))
            print(f"| {c.name} | {layer} | {len(assoc.latents)} | {best:.2f} | " + " | ".join(f"{x:.2f}" for x in cells) + " |", flush=True)
    print("done", c.name, round(time.time() - t0), flush=True)
names = [c.name for c in concepts]
for layer in layers:
    print(f"\ncross-concept AUROC at layer {layer} (row: direction fitted on all pairs of; column: pairs scored)")
    print("| direction \\ pairs | " + " | ".join(names) + " |")
    for a in names:
        ra, la = store[a]
        x = ra[layer]["residual"]; mu = x.mean(0); sd = x.std(0) + 1e-8; xt = (x - mu) / sd
        w = xt[la == 1].mean(0) - xt[la == 0].mean(0)
        row = []
        for b in names:
            rb, lb = store[b]
            s = ((rb[layer]["residual"] - mu) / sd) @ w
            row.append(auroc(s.tolist(), (lb == 1).tolist()))
        print(f"| {a} | " + " | ".join(f"{v:.2f}" for v in row) + " |", flush=True)
    # cosine of directions
    dirs = {}
    for a in names:
        ra, la = store[a]; x = ra[layer]["residual"]; mu = x.mean(0); sd = x.std(0) + 1e-8; xt = (x - mu) / sd
        w = xt[la == 1].mean(0) - xt[la == 0].mean(0); dirs[a] = w / np.linalg.norm(w)
    print(f"cosine of directions, layer {layer}")
    for a in names:
        print(f"| {a} | " + " | ".join(f"{float(dirs[a] @ dirs[b]):.2f}" for b in names) + " |")
