#!/usr/bin/env bash
# The CPU protocol of docs/benchmarks.md: 8 methods x 3 seeds on HAM10000 and APTOS 2019.
# Usage: bench/cpu_protocol.sh [DATA_DIR] [OUT_DIR]   (DATA_DIR holds ham10000/ and aptos2019/)
set -euo pipefail
data=${1:-../shared/data}
out=${2:-runs/bench_cpu}
methods=(ce mt kd crd src_mt crckd mt+ccd mt+crp)
start=$(date +%s)
crckd compare -c configs/benchmark/ham10000_cpu.yaml "data.root=$data/ham10000" \
    --methods "${methods[@]}" --seeds 0 1 2 --out "$out/ham10000"
crckd compare -c configs/benchmark/aptos_cpu.yaml "data.root=$data/aptos2019" \
    --methods "${methods[@]}" --seeds 0 1 2 --out "$out/aptos"
echo "total wall time: $(( $(date +%s) - start )) s"
