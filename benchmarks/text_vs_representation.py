"""Diagnostic: is an own-read concept shift in what the fine-tune *says* or in how it *represents* it?

    python benchmarks/text_vs_representation.py neuronlens-out/organisms-seed2/*/report.json

The own read (docs/METHOD.md section 1) compares the fine-tuned model reading its own answers with
the base model reading *its* own answers, so its concept shift mixes two things. This script adds
the third read that splits them: the base model reading the fine-tuned model's answers.

    own shift = [base on ft text - base on base text]   the text part: the answers changed
              + [ft on ft text   - base on ft text]     the representation part: the same text is
                                                        read differently

The text part is measured here (token means of the concept coordinate, the audit's projection,
layers and massive-token filter); the representation part is the report's own-read shift minus it.
Per concept: medians over the audited layers, signed towards risk, in % of the concept gap. Reads
the fine-tune's answers from the response cache the audit filled (same budget as the audit); only
the base model is run. A research diagnostic, not part of the verdict.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from neuronlens import alignment
from neuronlens.capture import TokenSequence
from neuronlens.config import AuditConfig
from neuronlens.integrations import concept_sums
from neuronlens.probes import load_probe_set, response_sequences
from neuronlens.risk import lower_median, prepare_risk  # lower_median: the audit's concept trend takes the same median over layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path, help="report.json files of audits of one base model with the same settings")
    ap.add_argument("--json", type=Path, default=None, help="Also write the per-layer parts here.")
    ap.add_argument("--rows", type=Path, nargs="*", default=[],
                    help="rows.json files of benchmarks/detection.py for these audits: also print AUROCs against their data labels.")
    args = ap.parse_args()
    reports = [json.loads(path.read_text()) for path in args.reports]
    first = reports[0]
    for path, report in zip(args.reports, reports):
        if report["base"]["manifest_sha256"] != first["base"]["manifest_sha256"] or report["config"] != first["config"]:
            raise SystemExit(f"{path}: another base model or other audit settings than {args.reports[0]}; split them into separate runs.")
    cfg = AuditConfig(**{k: first["config"][k] for k in ("max_prompts_per_set", "max_new_tokens", "token_budget", "massive_activation_factor", "probes")})
    layers = [int(row["layer"]) for row in first["layers"]]
    base = alignment.load_model(first["base"]["source"])
    sae = alignment.load_sae(base, layers=layers)
    sets = [load_probe_set(p, cfg.max_prompts_per_set) for p in cfg.probes]
    setup = prepare_risk(base, sae, layers, first["config"].get("concepts"))
    pad = base.tokenizer.pad_token_id or 0

    def concept_means(seqs: list[TokenSequence]) -> dict[int, torch.Tensor]:
        seqs = [TokenSequence("all", i, s.prompt_ids, s.response_ids) for i, s in enumerate(seqs)]
        sums, counts = concept_sums(base.model, sae, setup, layers, seqs, len(seqs), pad, cfg.token_budget, cfg.massive_activation_factor)
        return {la: sums[la].sum(0) / counts[la].sum() for la in layers}

    base_text = concept_means(response_sequences(base, sets, cfg.max_new_tokens))
    parts: dict[str, dict[str, dict[str, list[float]]]] = {}
    print(f"{'fine-tune':24s} {'concept':24s} {'own':>6s} {'text':>6s} {'repr':>6s}   (median over layers, % towards risk)")
    for path, report in zip(args.reports, reports):
        ft = alignment.load_model(report["ft"]["source"])
        ft_text = concept_means(response_sequences(ft, sets, cfg.max_new_tokens))
        own = {(c["concept"], c["layer"]): c["shift"] for c in report["risk"]["concepts"] if c["read"] == "own"}
        name = path.parent.name
        parts[name] = {}
        for k, c in enumerate(setup.concepts):
            scored = [la for la in layers if (c.name, la) in own]
            if not scored:
                continue
            text = [c.risk_sign * float(ft_text[la][k] - base_text[la][k]) for la in scored]
            full = [own[(c.name, la)] for la in scored]  # the report's shift is already signed towards risk
            rep = [f - t for f, t in zip(full, text)]
            parts[name][c.name] = {"layers": scored, "own": full, "text": text, "representation": rep}
            print(f"{name:24s} {c.name:24s} {lower_median(full) * 100:6.1f} {lower_median(text) * 100:6.1f} {lower_median(rep) * 100:6.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(parts, indent=1))
    if args.rows:
        _print_aurocs(parts, [r for f in args.rows for r in json.loads(f.read_text())["rows"]])


def _print_aurocs(parts: dict[str, dict[str, dict[str, list[float]]]], rows: list[dict]) -> None:
    """AUROC against the data labels of the misalignment score and of the largest text and
    representation parts over concepts (median over layers), over all the organisms and over those
    outside the partial doses (5-50% bad data)."""
    from detection import auroc  # benchmarks/ is on the path when this script runs

    rows = [r for r in rows if r["organism"] in parts]
    largest = {part: {o: max(lower_median(v[part]) for v in parts[o].values()) for o in parts} for part in ("text", "representation")}
    print(f"\n{'fine-tune':24s} {'truth':10s} {'score':>6s} {'text':>6s} {'repr':>6s}   (largest over concepts, %)")
    for r in rows:
        o = r["organism"]
        print(f"{o:24s} {r['truth']:10s} {r['score'] * 100:6.1f} {largest['text'][o] * 100:6.1f} {largest['representation'][o] * 100:6.1f}")
    for name, subset in (("all", rows), ("outside the partial doses", [r for r in rows if r.get("bad_fraction") in (None, 0.0, 1.0)])):
        truth = [r["truth"] == "misaligned" for r in subset]
        values = {
            "score": auroc([r["score"] for r in subset], truth),
            **{part: auroc([largest[part][r["organism"]] for r in subset], truth) for part in largest},
        }
        print(f"AUROC over {len(subset)} ({name}): " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))


if __name__ == "__main__":
    main()
