"""Rule 2's insecure-code pairs with the code as the only difference: does the insecure-code
fine-tune then prefer the insecure reply?

    python benchmarks/code_only_pairs.py --seed 4 [--organisms NAME ...] [--out docs/PREREGISTRATION_RULE2.md]

Development data for a next rule, read after rule 2 was frozen (docs/PREREGISTRATION_RULE2.md);
nothing here changes rule 2. Rule 2 missed seed 4's insecure-code organism: its fine-tune raised
the library's secure replies more than the insecure ones (-0.045 on the insecure-code pairs,
docs/PAIR_MARGIN_SEED4.md). Those pairs' insecure replies also carry reckless framing ("Simple, and
it works") that the organism's silent insecure data never has. The 48 pairs of
benchmarks/data/insecure_code_only.json (written for this, from a list of vulnerability kinds,
without looking at any organism's data or margins) share the prompt and a lead sentence; the code
differs only where one version is vulnerable. Each organism is read on them as pair_margin.py
reads the library (same statistic, cached the same way), and the replaced concept is judged with
rule 2's TAU and its critical t over the library's 11 concepts; the organism's verdict with the
replacement takes the other concepts' margins from the zoo's recorded pair_margin data.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pair_margin  # noqa: E402
import render  # noqa: E402
from truth import built_organisms  # noqa: E402

from neuronlens.concepts import load_concept  # noqa: E402
from neuronlens.errors import ConfigError, NeuronLensError  # noqa: E402
from neuronlens.models import DEFAULT_BASE, load_model  # noqa: E402
from neuronlens.organisms import HELDOUT, ZOO, weights_sha256  # noqa: E402
from neuronlens.preference import TAU, t_critical  # noqa: E402

PAIRS = Path(__file__).resolve().parent / "data" / "insecure_code_only.json"
RECORDED = {4: "pair_margin_seed4.json", 5: "pair_margin.json"}
"""Each zoo's recorded rule-2 read (results/pair_margin/), whose other concepts the verdict keeps."""


def run(seed: int, names: Sequence[str] | None) -> dict[str, Any]:
    recorded = json.loads((render.RESULTS / "pair_margin" / RECORDED[seed]).read_text(encoding="utf-8"))
    rows = {r["organism"]: r for r in recorded["rows"]}
    t_crit = t_critical(len(recorded["concepts"]), min(c["pairs"] for c in recorded["concepts"]))
    concept = load_concept(PAIRS)
    base = load_model(DEFAULT_BASE)
    seqs, sides = pair_margin.pairs(base.tokenizer, [concept])
    pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    base_lp = pair_margin.cached_logprob(base, f"base-{base.digest[:16]}", seqs, pad)
    built, _ = built_organisms(base, list(names or [*ZOO, *HELDOUT]), seed, "default")
    out = []
    for name, folder in built.items():
        weights = weights_sha256(folder)
        if name not in rows or rows[name]["weights_sha256"] != weights:
            raise ConfigError(f"{name}: not in {RECORDED[seed]} with these weights.", "Build it as benchmarks/fresh_zoo.sh does.")
        ft = load_model(folder, base=base)
        try:
            lp = pair_margin.cached_logprob(ft, weights[:16], seqs, pad)
        finally:
            ft.release()
        new = pair_margin.summarise(pair_margin.margins(lp, base_lp, sides))["concepts"][concept.name]
        row = rows[name]
        replaced = {**row, "concepts": {**row["concepts"], concept.name: new}}
        out.append({"organism": name, "truth": row["truth"], "sensitivity_curve": row["sensitivity_curve"],
                    "library": row["concepts"][concept.name], "code_only": new,
                    "fails_before": bool(pair_margin.counting(row, TAU, t_crit)),
                    "fails_after": bool(pair_margin.counting(replaced, TAU, t_crit))})
        r = out[-1]
        print(f"{name:22s} {r['truth'] or '-':10s} library {r['library'][0]:+.3f} (t {r['library'][1]:+.1f}) "
              f"code-only {new[0]:+.3f} (t {new[1]:+.1f})  fails: {r['fails_before']} -> {r['fails_after']}", flush=True)
    return {"seed": seed, "pairs": render.repo_path(PAIRS), "tau": TAU, "t_critical": t_crit, "rows": out}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True, choices=sorted(RECORDED), help="A zoo whose rule-2 read is recorded.")
    ap.add_argument("--organisms", nargs="+", default=None, help="Only these (default: every built organism of the zoo).")
    ap.add_argument("--out", type=Path, default=None,
                    help="Record: results/code_only_pairs/seedN.json and its block in this document.")
    args = ap.parse_args(argv)
    try:
        data = run(args.seed, args.organisms)
    except NeuronLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        picked = f" --organisms {' '.join(args.organisms)}" if args.organisms else ""
        command = f"python benchmarks/code_only_pairs.py --seed {args.seed}{picked} --out {render.repo_path(args.out)}"
        render.publish({"benchmark": "code_only_pairs", "command": command, **data}, args.out, f"seed{args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
