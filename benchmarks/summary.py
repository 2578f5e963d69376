"""README's "How well it works" table: every zoo audited with the default settings, judged two ways
side by side, from the committed results data (nothing is measured here).

    python benchmarks/summary.py            # write results/summary/readme.json and render README's block
    python benchmarks/render.py             # re-renders it with every other document

- *By training data* (issue #3's reading): an organism is misaligned when its data is; the score's
  AUROC as each run recorded it (the zoo, doses included; then the held-out kinds) and the verdicts
  of both that disagree with the data label. From results/detection/*.json.
- *By the three-way truth* (issue #18, docs/PREREGISTRATION_FRESH_ZOOS.md): misaligned / benign /
  degraded, fixed from data and behaviour before the audit (`benchmarks/truth.py`), judged by
  `benchmarks/judge.py`: the gate's AUROC (misaligned outside the doses vs benign) and its wrong
  verdicts, degraded organisms warned, the harm named, evidence shown. From
  results/judge/seed<N>.json, the pre-registered runs; for the development seed 0,
  results/judge/dev-seed0-c1.json (candidate C1 is the frozen rule, section 4.2).

Below it, the shipped rule and rule 2 (docs/PREREGISTRATION_RULE2.md) side by side on the same
organisms: every zoo whose matched pairs were read (results/pair_margin/) and whose audits were
judged, over the gate organisms both judged.

One row per zoo (seed and recipe): the 24-prompt audits of the embedded base with its shipped SAEs
(the detection runs with other prompt budgets, bases or SAEs are linked from their documents).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import judge  # noqa: E402
import render  # noqa: E402

from neuronlens.errors import NeuronLensError  # noqa: E402

README = render.ROOT / "README.md"
ROLES = {("default", 0): "development", ("default", 1): "development replicate", ("default", 2): "fresh",
         ("default", 3): "fresh, pre-registered", ("default", 4): "fresh, pre-registered (three-way)",
         ("default", 5): "fresh, pre-registered (three-way)", ("default", 6): "fresh, pre-registered (rule 2)",
         ("default", 7): "fresh, pre-registered (rule 2)"}
"""What each zoo was to the rule it is judged with (README and docs/METHOD.md section 7 tell the story);
a zoo of another recipe was never used to choose anything: "fresh recipe"."""
DEFAULT_AUDIT = {"base_default": True, "sae": None, "layers": None, "like": None}
"""Settings a detection run must have to stand for its zoo (and max_prompts == default_max_prompts)."""


def zoo_runs(files: list[Path]) -> dict[tuple[int, str], dict[bool, tuple[Path, dict]]]:
    """(seed, recipe) -> {heldout: (file, data)} over the default-settings detection runs."""
    zoos: dict[tuple[int, str], dict[bool, tuple[Path, dict]]] = {}
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        s = data["settings"]
        if any(s.get(k) != v for k, v in DEFAULT_AUDIT.items()) or s["max_prompts"] != s["default_max_prompts"]:
            continue
        runs = zoos.setdefault((s["seed"], s["recipe"]), {})
        if s["heldout"] in runs:
            raise NeuronLensError(f"{render.repo_path(path)} and {render.repo_path(runs[s['heldout']][0])} both stand for seed {s['seed']}, "
                                  f"recipe {s['recipe']}{' (held-out kinds)' if s['heldout'] else ''}.",
                                  "Keep one default-settings run per zoo in results/detection/, or give the other its settings.")
        runs[s["heldout"]] = (path, data)
    return zoos


def by_data(runs: dict[bool, tuple[Path, dict]]) -> dict:
    """The zoo judged against its training data: each run's AUROC, the verdicts of all its
    organisms that disagree with the data label, the dose series' rho."""
    ordered = [d for _, (_, d) in sorted(runs.items())]  # the zoo, then its held-out kinds
    rows = [r for d in ordered for r in d["rows"]]
    wrong = [r["organism"] for r in rows if (r["verdict"] != "pass") != (r["truth"] == "misaligned")]
    main = runs.get(False)
    dose = (main[1]["summary"].get("dose") or {}).get("spearman") if main else None
    # AUROC as each run recorded it: rows migrated from markdown carry rounded scores, whose ties
    # would change an AUROC recomputed over both runs
    aurocs = [{"organisms": len(d["rows"]), "auroc": d["summary"]["auroc"]} for d in ordered]
    return {"organisms": len(rows), "auroc": aurocs, "wrong": wrong, "dose_spearman": dose, "docs": [d["doc"] for d in ordered]}


def judge_file(seed: int, recipe: str) -> Path | None:
    """The three-way judgement of a zoo: the pre-registered run's, or for seed 0 the frozen rule's development run."""
    if recipe != "default":
        return None
    for name in (f"seed{seed}.json", f"dev-seed{seed}-c1.json"):
        if (render.RESULTS / "judge" / name).is_file():
            return render.RESULTS / "judge" / name
    return None


def three_way(path: Path) -> dict:
    """What a judgement says of the targets, and which organisms it judged."""
    data = json.loads(path.read_text(encoding="utf-8"))
    t = data["targets"]
    return {"data": render.repo_path(path), "judged": len(data["judged"]),
            "gate": {"organisms": t["gate"]["organisms"], "auroc": t["gate"]["auroc"], "wrong": t["gate"]["wrong"]},
            "degraded": {"organisms": t["degraded"]["organisms"], "unwarned": t["degraded"]["unwarned"]},
            "naming": {"organisms": t["naming"]["organisms"], "right": t["naming"]["right"]},
            "evidence_missing": t["evidence"]["missing"]}


def side_by_side(pair_files: list[Path] | None = None) -> list[dict]:
    """The shipped rule and rule 2 on the same organisms: for every zoo whose pairs were read
    (results/pair_margin/) and whose audits were judged (results/judge/seed<N>.json), both rules'
    gate AUROC and wrong verdicts over the gate organisms both judged, and rule 2's other targets."""
    out = []
    files = pair_files if pair_files is not None else sorted((render.RESULTS / "pair_margin").glob("*.json"))
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        judged = judge_file(data["seed"], "default")
        if judged is None or "rule2" not in data:
            continue
        shipped = {j["organism"]: j for j in json.loads(judged.read_text(encoding="utf-8"))["judged"]}
        rule2 = {r["organism"]: r for r in data["rule2"]["rows"]}
        both = [n for n in rule2 if n in shipped and not rule2[n]["sensitivity_curve"] and rule2[n]["class"] in ("misaligned", "benign")]
        t2 = data["rule2"]["targets"]
        ten = t2["dose"]["ten_percent_fails"]
        out.append({"seed": data["seed"], "organisms": len(both), "in_sample": data["rule2"]["in_sample"],
                    "data": [render.repo_path(judged), render.repo_path(path)], "doc": data["doc"],
                    "shipped": judge.targets([shipped[n] for n in both])["gate"], "rule2": judge.targets([rule2[n] for n in both])["gate"],
                    "rule2_ten_percent_fails": ten, "rule2_naming": {"organisms": t2["naming"]["organisms"], "right": t2["naming"]["right"]}})
    return sorted(out, key=lambda r: r["seed"])


def summary(files: list[Path] | None = None) -> dict:
    """The results data of the README table."""
    zoos = zoo_runs(files if files is not None else sorted((render.RESULTS / "detection").glob("*.json")))
    rows = []
    for (seed, recipe), runs in sorted(zoos.items(), key=lambda kv: (kv[0][1] != "default", kv[0][0])):
        judged = judge_file(seed, recipe)
        rows.append({"seed": seed, "recipe": recipe, "role": ROLES.get((recipe, seed), "fresh recipe" if recipe != "default" else "other"), "by_data": by_data(runs), "three_way": three_way(judged) if judged else None})
    return {"benchmark": "summary", "command": "python benchmarks/summary.py", "rows": rows, "side_by_side": side_by_side()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.parse_args()
    try:
        render.publish(summary(), README, name="readme")
    except NeuronLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
