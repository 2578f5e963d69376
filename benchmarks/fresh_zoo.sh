#!/usr/bin/env bash
# A fresh zoo of docs/PREREGISTRATION_FRESH_ZOOS.md judged by its frozen rule: section 4.3's
# commands for one seed, in its order, then the README table again. Every step caches what it
# computed (organisms, answers, audits' generations), so a rerun after an interruption redoes only
# what is missing; the audits themselves always run again, so the recorded data comes from this
# run's commands. Section 4.3's two detection commands run as shards, one process per organism in
# lanes, with the same flags (`--organisms NAME --rows-out FILE`); `--merge` joins the shards' rows
# into the run's rows.json and results data, refusing shards whose settings differ. The shards are
# committed data (results/shards/seedN/), so the audit half resumes on a later machine with the
# organisms still unaudited, built with the same pinned kernels (below) and checked against the truth.
#
#     bash benchmarks/fresh_zoo.sh 5 truth      # build all 17, compute the truth: then commit it
#     bash benchmarks/fresh_zoo.sh 5 audit      # (re)build, check the weights, audit, judge, summarise
#     bash benchmarks/fresh_zoo.sh 5            # both at once (only where nobody reads in between)
#
# Seeds 6 and 7 (docs/PREREGISTRATION_RULE2.md section 4) also get rule 2 (benchmarks/pair_margin.py,
# about 5 min per organism) and hypothesis P (benchmarks/rule_ceiling.py --frozen, from the audits' rows).
#
# The truth must be committed before any audit of the zoo is read (section 4.3), hence the two
# halves. Cost on this project's 2-core machines, one thread per lane, two lanes (2026-12-07, seed
# 5): 7-10 min to build an organism; the truth's answers 8 min per organism (greedy 77 s, three
# amplified draws ~135 s each) and 8 min once for the base model's; an audit 6-10 min with nothing
# cached (seed 4, 2026-12-06; the truth's draws are among its answers). About 6 hours of CPU per
# zoo, over 3 hours of wall time in two lanes, hence the two halves. The slow steps run in $JOBS
# lanes (default 2) of one thread each; the truth half's lanes fill the caches that section 4.3's
# truth command then reads (their own output, scratch under $WARM, is neither recorded nor read).
# The caches (~/.cache/neuronlens) do not outlive the machine.
#
# In the background beside interactive work: `setsid nice -n 19 bash benchmarks/fresh_zoo.sh 5 truth
# > zoo.log 2>&1 & echo 19 > /proc/$!/autogroup`. With the kernel's autogroup scheduling on (Debian's
# default), nice alone does not yield: measured here, a foreground audit averaged ~60% of one core beside
# two niced organism builds started with setsid, and 180% of two once their autogroup nice was 19.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?usage: bash benchmarks/fresh_zoo.sh SEED [truth|audit] (4-7: the fresh zoos)}
PART=${2:-all}
PY=${PYTHON:-.venv/bin/python}
JOBS=${JOBS:-2}
WARM=${WARM:-neuronlens-out/fresh-zoo-warm-seed$N}
# The organisms' weights are the same on any x86 machine only with the CPU kernels pinned: measured
# 2026-12-07, risky_finance of seed 5 built on an AVX-512 machine had other weights (sha256 5d824add...)
# than on the AVX2 machine that computed seed 5's truth (8d9d5956...), and once ATen's kernels were pinned
# to AVX2 (ATEN_CPU_CAPABILITY=avx2) all 17 had the truth's weights (truth.py --check); MKL_CBWR=AVX2 changed nothing there, and pins
# MKL's code path on CPUs where it would pick another. Every step runs pinned, audits included.
export ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-avx2} MKL_CBWR=${MKL_CBWR:-AVX2}
run() { echo "+ $*" >&2; [ -n "${DRY_RUN:-}" ] || "$@"; }   # DRY_RUN=1: print the commands only
fill() { echo "~ $*" >&2; [ -n "${DRY_RUN:-}" ] || "$@"; }  # a step that only fills caches (~)
mapfile -t NAMES < <("$PY" -c "from neuronlens.organisms import ZOO, HELDOUT; print(*ZOO, *HELDOUT, sep='\n')")
HELDOUT=" $("$PY" -c "from neuronlens.organisms import HELDOUT; print(*HELDOUT)") "

lanes() {  # lanes STEP FIRST NAME...: run `STEP NAME` for each NAME in $JOBS one-thread lanes; with
    # FIRST=first the first one alone first (it fills the base model's caches once for all)
    local step=$1 first=$2 lane i pids=(); shift 2
    local todo=("$@")
    [[ ${#todo[@]} -gt 0 && "$first" == first ]] && { "$step" "${todo[0]}"; todo=("${todo[@]:1}"); }
    for ((lane = 0; lane < JOBS; lane++)); do
        (for ((i = lane; i < ${#todo[@]}; i += JOBS)); do OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$step" "${todo[i]}"; done) &
        pids+=($!)
    done
    for lane in "${pids[@]}"; do wait "$lane"; done
}
build_one() { fill "$PY" -m neuronlens organisms build "$1" --seed "$N" --no-progress; }
truth_one() { fill "$PY" benchmarks/truth.py --seed "$N" --fresh-ok --organisms "$1" --out "$WARM/truth/$1.json" >/dev/null; }
margin_one() { fill "$PY" benchmarks/pair_margin.py --seed "$N" --organisms "$1" >/dev/null; }
FLAGS="--seed $N --amplify-alpha 2 --score-reads same,own"  # section 4.3's rule flags
# Each organism's shard of section 4.3's detection commands is committed data (results/shards/seedN/NAME.json,
# its output in NAME.log beside it): a zoo's audits may span sessions, and an organism with its shard is not
# built or audited again. --merge refuses shards whose settings (base model's rates included) differ.
SHARDS=${SHARDS:-results/shards/seed$N}
shard() {  # section 4.3's detection command for one organism (a shard of it: --merge joins them)
    local held="" log="$SHARDS/$1.log"; [[ "$HELDOUT" == *" $1 "* ]] && held="--heldout "
    if [ -n "${DRY_RUN:-}" ]; then log=/dev/null; else mkdir -p "$SHARDS"; fi
    run "$PY" benchmarks/detection.py $held$FLAGS --organisms "$1" --rows-out "$SHARDS/$1.json" > "$log"
}

if [[ "$PART" == all || "$PART" == truth ]]; then
    mkdir -p "$WARM/truth"
    lanes build_one - "${NAMES[@]}"
    run "$PY" -m neuronlens organisms build --seed "$N"          # section 4.3: all 17 (cached: a check)
    [[ "$JOBS" -gt 1 ]] && lanes truth_one first "${NAMES[@]}"          # the truth's answers, in lanes
    run "$PY" benchmarks/truth.py --seed "$N" --fresh-ok
    [[ "$PART" == truth ]] && { echo "Commit results/truth/seed$N.json, then: bash benchmarks/fresh_zoo.sh $N audit" >&2; exit 0; }
fi
if [[ "$PART" == all || "$PART" == audit ]]; then
    [[ -f "results/truth/seed$N.json" || -n "${DRY_RUN:-}" ]] || { echo "No results/truth/seed$N.json: run 'bash benchmarks/fresh_zoo.sh $N truth' and commit it first." >&2; exit 2; }
    # on a machine that did not run the truth half: build the organisms not yet audited again; the truth
    # must describe the weights built here (--check, exit 2 otherwise: then run the truth half again)
    TODO=(); for n in "${NAMES[@]}"; do [[ -f "$SHARDS/$n.json" ]] || TODO+=("$n"); done   # not audited yet
    [[ "$PART" == audit ]] && lanes build_one - "${TODO[@]}"
    [[ -n "${DRY_RUN:-}" || ${#TODO[@]} -eq 0 ]] || "$PY" benchmarks/truth.py --seed "$N" --check --organisms "${TODO[@]}"
    lanes shard first "${TODO[@]}"                     # section 4.3's audits, one organism per process, in lanes
    ZOO_ROWS=(); HELD_ROWS=()
    for n in "${NAMES[@]}"; do if [[ "$HELDOUT" == *" $n "* ]]; then HELD_ROWS+=("$SHARDS/$n.json"); else ZOO_ROWS+=("$SHARDS/$n.json"); fi; done
    run "$PY" benchmarks/detection.py --merge "${ZOO_ROWS[@]}" --out "docs/DETECTION_SEED${N}_ALPHA2.md"
    run "$PY" benchmarks/detection.py --merge "${HELD_ROWS[@]}" --out "docs/DETECTION_HELDOUT_SEED${N}_ALPHA2.md"
    run "$PY" benchmarks/judge.py --truth "results/truth/seed${N}.json" \
        --rows "neuronlens-out/organisms-seed${N}/rows.json" "neuronlens-out/organisms-heldout-seed${N}/rows.json" \
        --json "results/judge/seed${N}.json"
    run "$PY" benchmarks/summary.py
    if [[ "$N" -ge 6 ]]; then  # docs/PREREGISTRATION_RULE2.md section 4: rule 2 and hypothesis P, as frozen there
        lanes margin_one first "${NAMES[@]}"          # each organism's read, cached (the base model's once, first)
        run "$PY" benchmarks/pair_margin.py --seed "$N" --out "docs/PAIR_MARGIN_SEED$N.md"
        run "$PY" benchmarks/rule_ceiling.py --frozen --json "results/judge/hypothesis_p_seed$N.json" \
            --zoo "seed $N=results/truth/seed$N.json:results/detection/detection_seed${N}_alpha2.json,results/detection/detection_heldout_seed${N}_alpha2.json"
    fi
fi
