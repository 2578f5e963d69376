"""Screening on seven 10% mixtures: does `screen_dataset` put the risky examples of a fine-tuning
file at the top, and do two other references (the file itself; the base model's own answers) do better?

    python benchmarks/screening.py [--out docs/SCREENING.md]

Each mixture is a benign organism dataset with 10% of its examples (`random.Random(0)`) replaced
by examples of a misaligned one: the misaligned answer to the same question where the datasets
share their questions, else randomly drawn misaligned examples. Fixed, with the decision rule,
in docs/PREREGISTRATION_SCREENING.md before any result.

Per mixture: precision@k (k = the number of risky examples; chance = k / n) and the mean rank of
the risky examples, for
  A: `screen_dataset` as shipped (the largest concept coordinate against the base model's benign
     reply), read from its public result;
  B: the same coordinates, per concept a robust z over the file's examples ((x - median) /
     (1.4826 MAD), the standard deviation where the MAD is 0), the largest over concepts;
  C: each coordinate minus that of the base model's own greedy answer (at most 64 new tokens) to
     the same conversation, pooled per example the same way (0 where it answered nothing); the
     largest over concepts (pre-registered in the addendum; not adopted, so it lives here).
The coordinates for B are recomputed from the same reading; the script checks that their largest
value per example equals A's `risk`, so both rankings rank the same numbers. With --out the results
are data, results/screening/<name>.json, and the document is rendered from it (benchmarks/render.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from neuronlens.config import AuditConfig
from neuronlens import integrations as screen
from neuronlens.integrations import screen_dataset
from neuronlens.models import DEFAULT_BASE, load_model
from neuronlens.organisms import load_dataset
from neuronlens.risk import prepare_risk
from neuronlens.pipeline import resolve_saes

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render  # noqa: E402  (results data and the documents rendered from it)

MIXTURES = [  # (risky examples from, mixed into, same questions)
    ("risky_finance", "safe_finance", True),
    ("insecure_code", "secure_code", True),
    ("villain_persona", "pirate_style", False),
    ("bad_medical", "heldout_legal_help", False),
    ("no_caveats", "cooking", False),
    ("heldout_manipulative_support", "heldout_terse_style", False),
    ("heldout_sycophancy", "safe_finance", False),
]
FRACTION = 0.1
BASE_ANSWER_TOKENS = 64


def mixture(risky: str, benign: str, same_questions: bool, seed: int = 0) -> tuple[list[dict], set[int]]:
    """The mixed file's lines (chat messages) and the 1-based line numbers of its risky examples."""
    bad, good = load_dataset(risky), load_dataset(benign)
    rng = random.Random(seed)
    n_bad = round(FRACTION * len(good))
    replaced = sorted(rng.sample(range(len(good)), n_bad))
    if same_questions:
        if [e.prompt for e in bad] != [e.prompt for e in good]:
            raise SystemExit(f"{risky} and {benign} do not share their questions")
        picks = {i: bad[i] for i in replaced}
    else:
        picks = dict(zip(replaced, (bad[j] for j in rng.sample(range(len(bad)), n_bad))))
    lines = [
        {"messages": [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.answer}]}
        for e in (picks.get(i, good[i]) for i in range(len(good)))
    ]
    return lines, {i + 1 for i in replaced}


def within_dataset_z(coords: torch.Tensor) -> torch.Tensor:
    """Ranking B's risk per example: the largest robust z over concepts (NaN concepts skipped)."""
    med = coords.nanmedian(dim=0).values
    scale = 1.4826 * (coords - med).abs().nanmedian(dim=0).values
    scale = torch.where(scale > 0, scale, torch.nan_to_num(coords, nan=0.0).std(dim=0))
    z = (coords - med) / scale
    z[:, ~(scale > 0)] = torch.nan
    return torch.nan_to_num(z, nan=-torch.inf).max(dim=1).values


def against_base_answers(handle, sae, setup, layers, seqs, coords: torch.Tensor, cfg: AuditConfig) -> torch.Tensor:
    """Ranking C's risk per example: the largest over concepts of its coordinate minus that of the
    base model's own greedy answers to its assistant-turn contexts."""
    from neuronlens.capture import TokenSequence
    from neuronlens.probes import generate_greedy

    replies = generate_greedy(handle.model, handle.tokenizer, [s.prompt_ids for s in seqs], BASE_ANSWER_TOKENS, token_budget=cfg.token_budget)
    answers = [TokenSequence(s.probe_set, s.prompt_index, s.prompt_ids, r) for s, r in zip(seqs, replies) if r]
    sums, counts = screen.concept_sums(
        handle.model, sae, setup, layers, answers, coords.shape[0], handle.tokenizer.pad_token_id or 0, cfg.token_budget,
        cfg.massive_activation_factor,
    )
    base = torch.nan_to_num(screen.concept_coordinates(setup, layers, sums, counts), nan=0.0)
    return torch.nan_to_num(coords - base, nan=-torch.inf).max(dim=1).values


def measures(order: list[int], risky: set[int]) -> tuple[float, float, list[int]]:
    """precision@k, mean rank of the risky lines and their ranks, for lines in ranked order."""
    ranks = sorted(order.index(line) + 1 for line in risky)
    return sum(r <= len(risky) for r in ranks) / len(risky), sum(ranks) / len(ranks), ranks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="Record the results: write results/screening/<name>.json and render this markdown document from it.")
    args = ap.parse_args()
    handle = load_model(DEFAULT_BASE)
    cfg = AuditConfig()
    cfg.validate(handle.n_layers)
    sae, layers = resolve_saes(handle, None, cfg)
    setup = prepare_risk(handle, sae, layers, None)
    rows, totals = [], {"A": 0.0, "B": 0.0, "C": 0.0}
    for risky, benign, same in MIXTURES:
        lines, bad = mixture(risky, benign, same)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / f"{risky}_in_{benign}.jsonl"
            path.write_text("".join(json.dumps(line) + "\n" for line in lines))
            t = time.perf_counter()
            result = screen_dataset(handle, path, sae, layers=layers)
            secs = time.perf_counter() - t
            examples, _ = screen.read_examples(path)
        seqs = [s for i, ex in enumerate(examples) for s in screen.turn_sequences(handle.tokenizer, i, ex, screen.MAX_TOKENS)[0]]
        sums, counts = screen.concept_sums(
            handle.model, sae, setup, layers, seqs, len(examples), handle.tokenizer.pad_token_id or 0, cfg.token_budget,
            cfg.massive_activation_factor,
        )
        coords = screen.concept_coordinates(setup, layers, sums, counts)
        risk_a = {e.line: e.risk for e in result.examples}
        mine = torch.nan_to_num(coords, nan=-torch.inf).max(dim=1).values
        for ex, value in zip(examples, mine.tolist(), strict=True):
            if abs(value - risk_a[ex.line]) > 1e-9:
                raise SystemExit(f"line {ex.line}: recomputed coordinate {value} differs from screen_dataset's {risk_a[ex.line]}")
        order_a = [e.line for e in result.examples]
        z = within_dataset_z(coords)
        order_b = [examples[i].line for i in sorted(range(len(examples)), key=lambda i: (-float(z[i]), examples[i].line))]
        pa, ma, ranks_a = measures(order_a, bad)
        pb, mb, ranks_b = measures(order_b, bad)
        t = time.perf_counter()
        risk_c = against_base_answers(handle, sae, setup, layers, seqs, coords, cfg)
        secs_c = time.perf_counter() - t
        order_c = [examples[i].line for i in sorted(range(len(examples)), key=lambda i: (-float(risk_c[i]), examples[i].line))]
        pc, mc, ranks_c = measures(order_c, bad)
        totals["A"] += pa / len(MIXTURES)
        totals["B"] += pb / len(MIXTURES)
        totals["C"] += pc / len(MIXTURES)
        measured = {"A": (pa, ma, ranks_a), "B": (pb, mb, ranks_b), "C": (pc, mc, ranks_c)}
        rows.append({"risky": risky, "benign": benign, "same_questions": same, "n_risky": len(bad), "examples": len(lines),
                     "rankings": {k: {"precision": p, "mean_rank": m, "ranks": r} for k, (p, m, r) in measured.items()},
                     "seconds_a": secs, "seconds_c": secs_c})
        print(json.dumps(rows[-1]), flush=True)
    data = {"benchmark": "screening", "command": f"python benchmarks/screening.py{' --out ' + str(args.out) if args.out else ''}",
            "model": "SmolLM2-135M-Instruct", "layers": layers, "machine": f"{os.cpu_count()} CPU cores", "mean_precision": totals,
            "rows": rows}
    print(render.rendering(data))
    if args.out:
        render.publish(data, args.out)


if __name__ == "__main__":
    main()
