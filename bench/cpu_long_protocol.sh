#!/usr/bin/env bash
# The longer CPU protocol of docs/benchmarks.md: ce, mt, crckd, mt+ccd x 5 seeds on HAM10000,
# then on APTOS 2019 fold 1 (the question of the protocol, on both datasets first); then kd, crd
# and crckd (paper_faithful) x 3 seeds, HAM10000 then APTOS fold 1. Seed by seed, so that
# an interrupted protocol leaves complete, paired seeds; rerunning it skips finished runs and
# resumes a started one. Each finished run's metrics.json and epochs.csv, and the final tables,
# are copied to bench/results/cpu_long/.
# Usage: nice bench/cpu_long_protocol.sh [DATA_DIR] [OUT_DIR] [PART...]
#   DATA_DIR holds ham10000/ and aptos2019/; PARTs (default: all four, in this order) are
#   ham10000-main aptos-main ham10000-baselines aptos-baselines. Parts of different datasets
#   can run at once, in two shells (one core each); two of one dataset share its folder, whose
#   lock refuses the second.
set -euo pipefail
data=${1:-../shared/data}
out=${2:-runs/bench_cpu_long}
results=bench/results/cpu_long

keep() {  # copy the small files of every finished run under $1 to $results/$2
  for metrics in "$1"/*/seed*/metrics.json; do
    [ -e "$metrics" ] || continue
    run=$(dirname "$metrics"); dest="$results/$2/$(basename "$(dirname "$run")")/$(basename "$run")"
    mkdir -p "$dest" && cp "$run/metrics.json" "$run/epochs.csv" "$dest/"
  done
}
tables() {  # copy a comparison's tables to $results/$1 under the prefix $2
  for f in comparison.csv comparison.md differences.csv differences_last_epochs.csv bootstrap.csv; do
    if [ -e "$out/$1/$f" ]; then cp "$out/$1/$f" "$results/$1/$2$f"; fi
  done
}
main_methods() {  # name config data-root: ce, mt, crckd, mt+ccd x seeds 0-4
  local name=$1 cfg=$2 root=$3
  for seed in 0 1 2 3 4; do
    crckd compare -c "$cfg" "data.root=$root" --methods ce mt crckd mt+ccd --seeds "$seed" \
        --out "$out/$name"
    keep "$out/$name" "$name"
  done
  # Every run is done: this only tabulates, with the paired intervals against ce.
  crckd compare -c "$cfg" "data.root=$root" --methods ce mt crckd mt+ccd --seeds 0 1 2 3 4 \
      --out "$out/$name"
  tables "$name" five_seeds_
}
baselines() {  # name config data-root: kd, crd, crckd (paper_faithful) x seeds 0-2
  local name=$1 cfg=$2 root=$3 pf=${1}_paper_faithful
  for seed in 0 1 2; do
    crckd compare -c "$cfg" "data.root=$root" --methods ce kd crd --seeds "$seed" --out "$out/$name"
    keep "$out/$name" "$name"
    crckd compare -c "$cfg" "data.root=$root" method.preset=paper_faithful --methods crckd \
        --seeds "$seed" --out "$out/$pf"
    keep "$out/$pf" "$pf"
  done
  crckd compare -c "$cfg" "data.root=$root" --methods ce mt crckd mt+ccd kd crd --seeds 0 1 2 \
      --out "$out/$name"
  tables "$name" three_seeds_
  crckd compare -c "$cfg" "data.root=$root" method.preset=paper_faithful --methods crckd \
      --seeds 0 1 2 --out "$out/$pf"
  tables "$pf" ""
}
start=$(date +%s)
ham=(ham10000 configs/benchmark/ham10000_cpu_long.yaml "$data/ham10000")
aptos=(aptos configs/benchmark/aptos_cpu_long.yaml "$data/aptos2019")
parts=("${@:3}")
[ ${#parts[@]} -gt 0 ] || parts=(ham10000-main aptos-main ham10000-baselines aptos-baselines)
for part in "${parts[@]}"; do
  case $part in
    ham10000-main) main_methods "${ham[@]}" ;;
    aptos-main) main_methods "${aptos[@]}" ;;
    ham10000-baselines) baselines "${ham[@]}" ;;
    aptos-baselines) baselines "${aptos[@]}" ;;
    *) echo "unknown part $part (ham10000-main aptos-main ham10000-baselines aptos-baselines)" >&2
       exit 2 ;;
  esac
done
echo "total wall time: $(( $(date +%s) - start )) s"
