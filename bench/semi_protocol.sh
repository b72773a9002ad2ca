#!/usr/bin/env bash
# The semi-supervised benchmark of docs/benchmarks.md ("Few labels"): HAM10000 with 20 % and
# 10 % of the training labels kept (data.labeled_fraction), the CPU protocol's settings
# (configs/benchmark/ham10000_cpu.yaml), seeds 0-2: ce on the labelled part, mt, src_mt and crckd
# learning from the rest as unlabelled images. The upper bound, ce on all labels, is the CPU
# protocol's ce (bench/cpu_protocol.sh, the same config and seeds). Rerunning it skips finished
# runs and resumes a started one; the tables are copied to bench/results/semi/.
# Usage: bench/semi_protocol.sh [HAM10000_DIR] [OUT_DIR]
set -euo pipefail
data=${1:-../shared/data/ham10000}
out=${2:-runs/bench_semi}
results=bench/results/semi
start=$(date +%s)
for fraction in 0.2 0.1; do
  name=ham10000_labels_${fraction#0.}0pct
  for seed in 0 1 2; do  # seed by seed: an interrupted benchmark leaves complete, paired seeds
    crckd compare -c configs/benchmark/ham10000_cpu.yaml "data.root=$data" \
        "data.labeled_fraction=$fraction" --methods ce mt src_mt crckd --seeds "$seed" \
        --out "$out/$name"
  done
  crckd compare -c configs/benchmark/ham10000_cpu.yaml "data.root=$data" \
      "data.labeled_fraction=$fraction" --methods ce mt src_mt crckd --seeds 0 1 2 \
      --out "$out/$name"
  mkdir -p "$results/$name"
  cp "$out/$name"/{comparison.csv,comparison.md,comparison.png,differences.csv,bootstrap.csv} "$results/$name/"
done
echo "total wall time: $(( $(date +%s) - start )) s"
