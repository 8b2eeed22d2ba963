#!/usr/bin/env bash
# Every run behind README's results (issue: reproduce the paper at CPU scale). Two streams run side
# by side on a 2-core machine (~105 min from nothing); each run is run_family.sh, resumable, so re-running this
# script skips what is done. Then `python experiments/summarize.py` writes the tables into README.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RUNS:-runs/exp}
export OMP_NUM_THREADS=1 EVAL_LIMIT=${EVAL_LIMIT:-200}
run() { local name=$1; shift; env "$@" OUT="$R/$name" bash run_family.sh > "$R/$name.log" 2>&1; }
mkdir -p "$R"
stream1() {
  run main_adjusted SEEDS="1 2 3" LR_SCHEDULE=adjusted             # progressive + independent
  run growth_fpi SEEDS=1 METHOD=fpi SKIP_INDEPENDENT=1
  run growth_interpolate SEEDS=1 DEPTH=interpolate SKIP_INDEPENDENT=1
  run growth_aki_optstate SEEDS=1 OPT_STATE=1 SKIP_INDEPENDENT=1
  run ratio_4x_jump SEEDS=1 MEMBERS=50k,250k SKIP_INDEPENDENT=1   # skips 120k: one ~5x growth
  # 2 -> 4 blocks in one step, where the depth methods differ (stack 0101, interpolate 0011, zero)
  run depth_4x_interpolate SEEDS=1 MEMBERS=50k,250k DEPTH=interpolate SKIP_INDEPENDENT=1
  run depth_4x_zero SEEDS=1 MEMBERS=50k,250k DEPTH=zero SKIP_INDEPENDENT=1
  run beyond_wsd_fixed SEEDS="1 2 3" SCHEDULE=wsd LR_SCHEDULE=fixed SKIP_INDEPENDENT=1
  run beyond_budget_0.6 SEEDS=1 BUDGET_SCALE=0.6 SKIP_INDEPENDENT=1
  # every grown stage gets its independent counterpart's tokens (1.2839 = independent / progressive FLOPs)
  run beyond_wsd_full_budget SEEDS="1 2 3" SCHEDULE=wsd BUDGET_SCALE=1.2839 SKIP_INDEPENDENT=1
}
stream2() {
  run main_fixed SEEDS="1 2 3" LR_SCHEDULE=fixed SKIP_INDEPENDENT=1
  # 0.8x the budget; 50k and 120k keep the paper's 0.78 of their independent FLOPs, 250k the rest
  run beyond_combo_0.8_split SEEDS="1 2 3" BUDGET_SCALE=0.8 STAGE_FRACTIONS=0.306,1.92,5.94 SCHEDULE=wsd \
    OPT_STATE=1 SKIP_INDEPENDENT=1
  # WSD changes the independent members' schedule too: they are trained again, with WSD
  run beyond_wsd SEEDS="1 2 3" SCHEDULE=wsd
  # grow each member from its predecessor's weights before the decay (the members still decay)
  run beyond_wsd_stable SEEDS="1 2 3" SCHEDULE=wsd GROW_FROM=stable SKIP_INDEPENDENT=1
  run beyond_combo_0.8 SEEDS=1 BUDGET_SCALE=0.8 SCHEDULE=wsd OPT_STATE=1 SKIP_INDEPENDENT=1
}
stream1 & pid1=$!
stream2 & pid2=$!
wait $pid1 && wait $pid2
echo "all runs done in $R; now: python experiments/summarize.py --runs $R"
