#!/usr/bin/env bash
# Every run behind RESULTS.md (RUNS=runs/exp by default). Two streams run side by side on a
# 2-core machine (~90 min from nothing); each run is run_family.sh, resumable, so re-running this
# script skips what is done. It copies each seed's report.json to results/runs/ (commit them); then
# `python experiments/summarize.py --runs results/runs` writes the tables into RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RUNS:-runs/exp}
export OMP_NUM_THREADS=1 EVAL_LIMIT=${EVAL_LIMIT:-200}
run() { local name=$1; shift; env "$@" OUT="$R/$name" bash run_family.sh > "$R/$name.log" 2>&1; }
mkdir -p "$R"
stream1() {
  run main_adjusted SEEDS="1 2 3" LR_SCHEDULE=adjusted             # progressive + independent
  run growth_fpi SEEDS=1 METHOD=fpi SKIP_INDEPENDENT=1
  run growth_aki_top_below SEEDS=1 AKI_TOP=below SKIP_INDEPENDENT=1  # AKI's top block from the one below
  run ratio_4x_jump SEEDS=1 MEMBERS=50k,250k SKIP_INDEPENDENT=1   # skips 120k: one ~5x growth
  # 2 -> 4 blocks in one step, where the depth methods differ (stack 0101, interpolate 0011, zero)
  run depth_4x_interpolate SEEDS=1 MEMBERS=50k,250k DEPTH=interpolate SKIP_INDEPENDENT=1
  run depth_4x_zero SEEDS=1 MEMBERS=50k,250k DEPTH=zero SKIP_INDEPENDENT=1
  run growth_aki_optstate SEEDS=1 OPT_STATE=1 SKIP_INDEPENDENT=1
}
stream2() {
  # WSD changes the independent members' schedule too: they are trained again, with WSD
  run beyond_wsd SEEDS="1 2 3" SCHEDULE=wsd
  run growth_fpi_twins SEEDS=1 METHOD=fpi NOISE=0 SKIP_INDEPENDENT=1  # copies split exactly: twins
  run main_fixed SEEDS="1 2 3" LR_SCHEDULE=fixed SKIP_INDEPENDENT=1
}
stream1 & pid1=$!
stream2 & pid2=$!
wait $pid1 && wait $pid2
# speculative decoding speed within the main run's first seed (results/speculative.md)
nice python3 experiments/speculative.py --run "$R/main_adjusted/seed_1" --out results
# the compact results (each seed's report.json, kilobytes; no checkpoints) that RESULTS.md is made
# from, to commit: python experiments/summarize.py --runs results/runs then regenerates its tables
for f in "$R"/*/seed_*/report/report.json; do
  rel=${f#"$R"/}; mkdir -p "results/runs/$(dirname "$rel")"; cp "$f" "results/runs/$rel"
done
echo "all runs done in $R; now: python experiments/summarize.py --runs results/runs"
