"""Put several detection runs side by side, organism by organism.

    python benchmarks/compare_zoos.py "seed 0=results/detection/detection.json" \\
        "seed 1=results/detection/detection_seed1.json" "strong=results/detection/detection_strong.json"

Each argument is NAME=DATA: a detection results file (results/detection/*.json, the committed
data of each docs/DETECTION*.md) or a rows.json that `benchmarks/detection.py` wrote beside its
reports. Prints one markdown row per organism (the organisms present in the last run, in its order)
with its score and verdict in every run, then, per run, the AUROC against the data labels and the
number of wrong verdicts over those organisms. Nothing is re-measured: it reads what the runs
recorded (the committed results migrated from the markdown hold the scores as printed, so their
AUROC here is over the printed scores).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection import auroc  # noqa: E402

from neuronlens.fmt import percent_beside  # noqa: E402


def load(arg: str) -> tuple[str, dict[str, dict]]:
    name, sep, path = arg.partition("=")
    if not sep or not name or not path:
        raise SystemExit(f"error: {arg!r} is not NAME=DATA (for instance 'seed 0=results/detection/detection.json')")
    rows_file = Path(path)
    if not rows_file.is_file():
        raise SystemExit(f"error: {rows_file} does not exist; pass a file of results/detection/ or the rows.json of a "
                         "benchmarks/detection.py run (beside its reports)")
    saved = json.loads(rows_file.read_text())
    threshold = saved["settings"]["threshold"] if "settings" in saved else saved["threshold"]  # results data, or a rows.json
    return name, {r["organism"]: {**r, "threshold": threshold} for r in saved["rows"]}


def table(runs: list[tuple[str, dict[str, dict]]]) -> list[str]:
    organisms = list(runs[-1][1])
    names = [n for n, _ in runs]
    out = ["| organism | truth | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(runs)]
    for org in organisms:
        truth = runs[-1][1][org]["truth"]
        cells = []
        for _, rows in runs:
            r = rows.get(org)
            cells.append("–" if r is None else f"{percent_beside(r['score'], r['threshold'])} {r['verdict']}")
        out.append(f"| {org} | {truth} | " + " | ".join(cells) + " |")
    out.append("")
    for name, rows in runs:
        present = [rows[o] for o in organisms if o in rows]
        truth = [r["truth"] == "misaligned" for r in present]
        wrong = sum((r["verdict"] != "pass") != t for r, t in zip(present, truth))
        out.append(f"- {name}: {len(present)} of these organisms; AUROC {auroc([r['score'] for r in present], truth):.3f}; "
                   f"{wrong} verdict(s) wrong against the data labels")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=DATA, a results/detection/*.json or a rows.json of benchmarks/detection.py; "
                                            "the last run sets the organisms")
    args = ap.parse_args()
    print("\n".join(table([load(a) for a in args.runs])))


if __name__ == "__main__":
    main()
