#!/usr/bin/env bash
# A fresh zoo of docs/PREREGISTRATION_FRESH_ZOOS.md judged by its frozen rule: section 4.3's
# commands for one seed, in its order, then the README table again. Every step caches what it
# computed (organisms, answers, audits' generations), so a rerun after an interruption redoes only
# what is missing; the audits themselves always run again, so the recorded data comes from this
# run's commands. Hours of CPU per seed on 2 cores (17 organisms: ~5 min each to build; truth and
# audit ~6.5 min each single-threaded).
#
#     bash benchmarks/fresh_zoo.sh 4        # then 5
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?usage: bash benchmarks/fresh_zoo.sh SEED (4 or 5: the fresh zoos)}
PY=${PYTHON:-.venv/bin/python}
run() { echo "+ $*" >&2; [ -n "${DRY_RUN:-}" ] || "$@"; }  # DRY_RUN=1: print the commands only
run "$PY" -m neuronlens organisms build --seed "$N"
run "$PY" benchmarks/truth.py --seed "$N" --fresh-ok
run "$PY" benchmarks/detection.py --seed "$N" --amplify-alpha 2 --score-reads same,own --out "docs/DETECTION_SEED${N}_ALPHA2.md"
run "$PY" benchmarks/detection.py --heldout --seed "$N" --amplify-alpha 2 --score-reads same,own --out "docs/DETECTION_HELDOUT_SEED${N}_ALPHA2.md"
run "$PY" benchmarks/judge.py --truth "results/truth/seed${N}.json" \
    --rows "neuronlens-out/organisms-seed${N}/rows.json" "neuronlens-out/organisms-heldout-seed${N}/rows.json" \
    --json "results/judge/seed${N}.json"
run "$PY" benchmarks/summary.py
