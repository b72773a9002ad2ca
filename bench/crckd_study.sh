#!/usr/bin/env bash
# The small-budget CRCKD study (docs/crckd.md, "What the validation study found"): `crckd tune`
# over bench/study/crckd_small_budget.yaml on HAM10000 with the CPU protocol's config, on the
# validation split only (no test image is opened), 24 trials, TPE seeded, median pruning.
# Rerunning it continues the study (docs/tune.md). Its tables go to bench/results/crckd_study/.
# Usage: bench/crckd_study.sh [HAM10000_DIR] [OUT_DIR]
set -euo pipefail
data=${1:-../shared/data/ham10000}
out=${2:-runs/crckd_study}
crckd tune -c configs/benchmark/ham10000_cpu.yaml "data.root=$data" method.name=crckd \
    --space bench/study/crckd_small_budget.yaml --trials 24 --seed 0 --out "$out"
mkdir -p bench/results/crckd_study
cp "$out"/{trials.csv,trials.md,trials.png,best.yaml} bench/results/crckd_study/
