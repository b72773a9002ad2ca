#!/usr/bin/env bash
# Confirms the small-budget CRCKD study (docs/crckd.md, "What the validation study found") on
# seeds the study did not select with: its best trial's config (best.yaml of bench/crckd_study.sh)
# against CRCKD's defaults and CE, seeds 1-3, the CPU protocol's config on HAM10000, then the
# table of validation metrics paired by seed (bench/schedule_study.py; no test metric is read).
# Usage: bench/crckd_study_confirm.sh [HAM10000_DIR] [STUDY_DIR] [OUT_DIR]
set -euo pipefail
data=${1:-../shared/data/ham10000}
study=${2:-runs/crckd_study}
out=${3:-runs/crckd_study_confirm}
for seed in 1 2 3; do
  crckd compare -c "$study/best.yaml" "data.root=$data" --methods crckd --seeds $seed \
      --out "$out/tuned"
  crckd compare -c configs/benchmark/ham10000_cpu.yaml "data.root=$data" --methods crckd ce \
      --seeds $seed --out "$out/defaults"
done
mkdir -p bench/results/crckd_study
python bench/schedule_study.py "$out" --seeds 1 2 3 --run "ce=defaults/ce" \
    --run "crckd, defaults=defaults/crckd" --run "crckd, best trial=tuned/crckd" \
    > bench/results/crckd_study/confirmation.md
