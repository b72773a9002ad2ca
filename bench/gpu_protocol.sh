#!/usr/bin/env bash
# The paper-scale GPU protocol of docs/benchmarks.md: DenseNet-121, 224 px, 80 epochs, batch 64,
# the whole comparison table over 3 seeds on HAM10000 and the 5 APTOS folds. Pass ImageNet
# DenseNet-121 weights as the third argument (a local file) to start from them, as the paper
# does; without it the backbone starts from random weights.
# Usage: bench/gpu_protocol.sh DATA_DIR [OUT_DIR] [WEIGHTS]
set -euo pipefail
data=${1:?DATA_DIR holding ham10000/ and aptos2019/}
out=${2:-runs/bench_gpu}
pretrained=${3:-false}
methods=(ce mt kd crd src_mt crckd mt+ccd mt+crp)
common=("model.pretrained=$pretrained")
crckd compare -c configs/ham10000/baseline.yaml "data.root=$data/ham10000" "${common[@]}" \
    --methods "${methods[@]}" --seeds 0 1 2 --out "$out/ham10000"
crckd compare -c configs/aptos/baseline.yaml "data.root=$data/aptos2019" "${common[@]}" \
    --methods "${methods[@]}" --seeds 2020 --folds 1 2 3 4 5 --out "$out/aptos"
