#!/usr/bin/env bash
# Every run behind RESULTS.md's saving at equal loss, in the order they depend on each other, then
# the compact results to commit (results/runs/equal_loss*.json, consistency.json) and the sections.
# Each phase is resumable: re-running the script skips what is done. The LR sweep runs beside the
# plan's curves (3 seeds); the frontier grows from the curves' members; the trend adds a fifth member
# (tiny5: its smaller stages are the tiny curves' runs, in the same folder) and the family planned at
# 2x Chinchilla (a folder of its own: its runs have other lengths). About 12 h on a 2-core CPU.
#   bash experiments/equal_loss.sh        # DATA, OUT, SEEDS, JOBS override the defaults below
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/openstax_bytes}; OUT=${OUT:-runs/equal_loss}; SEEDS=${SEEDS:-1 2 3}; JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
[ -f "$DATA/meta.json" ] || python3 data/prepare.py --dataset ../shared/data/corpus/openstax --tokenizer bytes --out "$DATA"
E() { nice -n "${NICE:-0}" python3 experiments/equal_loss.py "$@" --data "$DATA" --out "$OUT"; }
mkdir -p "$OUT"
E curves --settings plan --seeds $SEEDS --jobs "$JOBS" > "$OUT/curves.log" 2>&1 &
curves=$!
{ NICE=5 E sweep --families independent --jobs 1 && NICE=5 E sweep --families progressive --jobs 1; } > "$OUT/sweep.log" 2>&1
wait $curves
# the progressive family on smaller budgets: every grown stage shortened (seed 1), or only the last
E frontier --budget_scales 0.5 0.6 0.7 --seeds 1 --jobs "$JOBS" > "$OUT/frontier.log" 2>&1
E frontier --budget_scales 0.8 --seeds $SEEDS --jobs "$JOBS" >> "$OUT/frontier.log" 2>&1
E frontier --shrink last --budget_scales 0.6 0.65 0.7 --seeds $SEEDS --jobs "$JOBS" >> "$OUT/frontier.log" 2>&1
E frontier --grow_from stable --budget_scales 1 --seeds $SEEDS --jobs "$JOBS" >> "$OUT/frontier.log" 2>&1
# the growth's knobs at the plan's budget (seed 1), and AKI's top block from below on every seed and smaller budgets
for knob in "--noise 0.3" "--noise 0.03" "--rewarmup 0.15" "--rewarmup 0"; do
  E frontier $knob --budget_scales 1 --seeds 1 --jobs "$JOBS" >> "$OUT/frontier.log" 2>&1
done
E frontier --aki_top below --budget_scales 1 --seeds $SEEDS --jobs "$JOBS" >> "$OUT/frontier.log" 2>&1
E frontier --aki_top below --shrink last --budget_scales 0.7 0.8 0.85 --seeds $SEEDS --jobs "$JOBS" >> "$OUT/frontier.log" 2>&1
python3 experiments/consistency.py --out "$OUT" --data "$DATA" --seeds $SEEDS
# the trend: one more member, and every member on twice the tokens per parameter
E curves --family tiny5 --settings plan --seeds $SEEDS --jobs "$JOBS" > "$OUT/tiny5.log" 2>&1
OUT="${OUT}_chinchilla2" E curves --chinchilla 2 --settings plan --seeds $SEEDS --jobs "$JOBS" > "${OUT}_chinchilla2.log" 2>&1
E collect
E collect --family tiny5 --results results/runs/equal_loss_tiny5.json
OUT="${OUT}_chinchilla2" E collect --chinchilla 2 --results results/runs/equal_loss_chinchilla2.json
python3 experiments/summarize.py --runs results/runs
echo "done: commit results/runs/*.json, RESULTS.md, results/equal_loss.png and results/equal_loss_trend.png"
