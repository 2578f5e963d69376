"""Is a risk concept missing from the audit because the model does not represent it, or because
the SAE does not keep it?

    python benchmarks/concept_coverage.py [--folds 5] [--out docs/CONCEPT_COVERAGE.md]

For every concept of the library and every audited layer of the embedded model, the base model
reads each matched pair's two replies (as the association step does) and four reads of the same
replies are compared by how well they tell positives from negatives:

- **latents**: what the audit uses — the number of SAE latents that pass the association rule
  (AUROC >= 0.75, q < 0.05, higher on positives; a concept is scored at a layer with >= 3) and the
  best single latent's AUROC;
- **residual**: a linear read of the raw residual stream (mean over the reply's tokens), the
  difference of class means fitted on the training folds and scored on the held-out pairs;
- **reconstruction**: the same linear read of the SAE's reconstruction of those residuals (what
  the dictionary keeps);
- **codes**: the same linear read of the SAE codes, all latents (what a dense read of the
  dictionary could use, without the per-latent selection);
- **residual, max over tokens**: the residual's direction as above, but each held-out reply scored
  by its largest projection over its tokens instead of its mean: a concept carried by a few tokens
  (a `verify=False` in a code answer) is diluted by the mean and kept by the max.

Cross-validation splits by pair, so both replies of a pair are always on the same side. Reading
the table: a concept with a high residual AUROC and a low reconstruction AUROC is lost by the SAE
(a wider or differently trained dictionary could help); low on all four, the model (at this
scale, with these texts) does not separate it linearly, and no SAE would.

With --out the results are data, results/concept_coverage/<name>.json, and the document is
rendered from it (benchmarks/render.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from neuronlens import alignment
from neuronlens.capture import gather, make_batches, massive_keep, run_to_layers
from neuronlens.models import DEFAULT_BASE
from neuronlens.concepts import load_concepts, pair_sequences
from neuronlens.risk import associations_from_means

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection import auroc  # noqa: E402  (the benchmarks' one AUROC)
import render  # noqa: E402  (results data and the documents rendered from it)
from tables import COVERAGE_READS  # noqa: E402


def cv_linear_auroc(x: np.ndarray, labels: np.ndarray, pair: np.ndarray, folds: int, seed: int = 0,
                    tokens: list[np.ndarray] | None = None) -> float:
    """Held-out AUROC of the difference-of-means direction, folds split by pair; scores of all
    held-out replies are pooled before the AUROC (each fold's direction is fitted without them).
    With `tokens` (each reply's per-token vectors), a held-out reply scores the max over its tokens."""
    pairs = np.unique(pair)
    order = np.random.default_rng(seed).permutation(pairs)
    scores = np.zeros(len(x))
    for f in range(folds):
        test_pairs = set(order[f::folds].tolist())
        test = np.array([p in test_pairs for p in pair])
        tr = ~test
        mu = x[tr].mean(0)
        sd = x[tr].std(0) + 1e-8  # standardised, so a few large dimensions do not decide alone
        xt = (x - mu) / sd
        w = xt[tr & (labels == 1)].mean(0) - xt[tr & (labels == 0)].mean(0)
        if tokens is None:
            scores[test] = xt[test] @ w
        else:
            scores[test] = [float((((tokens[i] - mu) / sd) @ w).max()) for i in np.flatnonzero(test)]
    return auroc(scores.tolist(), (labels == 1).tolist())


@torch.inference_mode()
def reply_reads(handle, sae, seqs, layers: list[int]) -> dict[int, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """Per reply and layer: mean residual, mean SAE reconstruction and mean SAE code over the reply's
    tokens (massive-activation tokens left out, as everywhere in the audit)."""
    model = handle.model
    device = next(model.parameters()).device
    index = {id(s): i for i, s in enumerate(seqs)}
    out = {layer: {"residual": np.zeros((len(seqs), sae[layer].info.d_in)), "reconstruction": np.zeros((len(seqs), sae[layer].info.d_in)),
                   "codes": np.zeros((len(seqs), sae[layer].d_sae)), "tokens": [None] * len(seqs)} for layer in layers}
    for batch in make_batches(seqs, "response", 4096, handle.tokenizer.pad_token_id or 0):
        resid = run_to_layers(model, batch.input_ids.to(device), batch.attention_mask.to(device), layers)
        for layer in layers:
            x = gather(resid[layer], batch).float()
            keep = massive_keep(x, 10.0)
            z = sae[layer].encode(x)
            xhat = sae[layer].decode(z)
            for r, seq in enumerate(batch.sequences):
                sel = (batch.row == r) & keep
                i = index[id(seq)]
                out[layer]["residual"][i] = x[sel].double().mean(0).cpu().numpy()
                out[layer]["reconstruction"][i] = xhat[sel].double().mean(0).cpu().numpy()
                out[layer]["codes"][i] = z[sel].double().mean(0).cpu().numpy()
                out[layer]["tokens"][i] = x[sel].double().cpu().numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None,
                    help="Record the results: write results/concept_coverage/<name>.json and render this markdown document from it.")
    args = ap.parse_args()
    base = alignment.load_model(DEFAULT_BASE)
    sae = alignment.load_sae(base)
    layers = sorted(sae)
    rows = []
    for concept in load_concepts():
        seqs, labels = pair_sequences(base.tokenizer, concept)
        pair = np.array([s.prompt_index for s in seqs])
        reads = reply_reads(base, sae, seqs, layers)
        for layer in layers:
            assoc = associations_from_means(concept.name, layer, reads[layer]["codes"], labels)
            best = float(np.max(np.where(assoc.pos_mean > assoc.neg_mean, assoc.auroc, 0.0)))  # higher on positives, as the rule asks
            cells = [cv_linear_auroc(reads[layer][k], labels, pair, args.folds) for k in ("residual", "reconstruction", "codes")]
            cells.append(cv_linear_auroc(reads[layer]["residual"], labels, pair, args.folds, tokens=reads[layer]["tokens"]))
            rows.append({"concept": concept.name, "layer": layer, "latents": len(assoc.latents), "best_latent": best,
                         **dict(zip(COVERAGE_READS, cells))})
            print(json.dumps(rows[-1]), flush=True)
    command = f"python benchmarks/concept_coverage.py --folds {args.folds}{' --out ' + str(args.out) if args.out else ''}"
    data = {"benchmark": "concept_coverage", "command": command, "model": "SmolLM2-135M-Instruct with the shipped SAEs",
            "folds": args.folds, "rows": rows}
    print(render.rendering(data))
    if args.out:
        render.publish(data, args.out)


if __name__ == "__main__":
    main()
