#!/usr/bin/env bash
# The EMA-decay study of docs/crckd.md ("What the validation study found"), validation split
# only: CRCKD with the paper's EMA decay 0.99 against 0.873 (a half-life of 5.1 steps, about 1 %
# of the CPU protocol's 6 x 94 steps, as the paper's 69 steps are of its run), and CE, seeds 0-2,
# CPU protocol config on HAM10000; then the table of validation metrics.
# Usage: bench/schedule_study.sh [HAM10000_DIR] [OUT_DIR]
set -euo pipefail
data=${1:-../shared/data/ham10000}
out=${2:-runs/study}
cfg=configs/benchmark/ham10000_cpu.yaml
for seed in 0 1 2; do
  crckd compare -c $cfg "data.root=$data" method.ema.decay=0.873 --methods crckd --seeds $seed \
      --out "$out/ema_relative"
  crckd compare -c $cfg "data.root=$data" --methods crckd ce --seeds $seed --out "$out/ema_paper"
done
python bench/schedule_study.py "$out" > bench/results/schedule_study/validation.md
