#!/usr/bin/env bash
# Train a model family progressively (smallest -> grow -> train -> ... -> largest) and, with the same
# recipe, every member independently from scratch; then evaluate both families. This file is the
# algorithm; family.py spells out each step (every stage's train.py and expand.py command).
#
#   bash run_family.sh                         # tiny family on CPU (offline when ../shared exists)
#   FAMILY=paper NPROC=8 CHINCHILLA=2 bash run_family.sh
#   bash run_family.sh --family tiny --seeds "1 2" --lr_schedule fixed --out runs/fixed
#   bash run_family.sh --help                  # every option (environment variable or flag)
#
# Re-running continues: finished stages (checkpoint marked done) are skipped, a killed one resumes.
# Every option is checked before anything runs; a second run on the same OUT is refused (a lock).
set -euo pipefail
cd "$(dirname "$0")"
export PYTHON=${PYTHON:-python3}
# OpenMP threads that spin while waiting lose most of their time when the cores are shared
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
for arg in "$@"; do  # --help: the lines above, then every option
  case "$arg" in --help|-h) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; echo; exec "$PYTHON" family.py options ;; esac
done

# --- settings: every option checked (family.py), then exported for the steps below -------------
settings=$("$PYTHON" family.py settings "$@")
eval "$settings"

# One run per OUT: a second one would train the same stages at once and interleave their metrics.
# The lock is held until this script and the trainings it started have exited.
die() { echo "error: $*" >&2; exit 2; }
command -v flock > /dev/null || die "flock (util-linux) is needed: it keeps two runs off the same OUT"
mkdir -p "$OUT"
exec 9<>"$OUT/.lock"
flock -n 9 || die "another run_family.sh (PID $(cat "$OUT/.lock")), or a training it started, is running" \
  "on $OUT; wait for it to end or choose another OUT"
echo $$ > "$OUT/.lock"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run_family.log"; }
# DRY_RUN=1: data preparation, growth and evaluation are printed, not run (train prints its stage)
step() { if [ "$DRY_RUN" = 1 ]; then echo "  (dry run) $*"; else "$@"; fi; }

grow() {  # grow SEED SIZE: SIZE's predecessor grown into SIZE (expand.py; kept while its source is unchanged)
  local spec cmd; spec=$("$PYTHON" family.py grow "$@"); eval "$spec"
  step "${cmd[@]}"
}
train() {  # train SEED KIND SIZE: one stage of the plan; the smallest independent member may be a reuse
  local spec about layout fits cmd reuse=""; spec=$("$PYTHON" family.py stage "$@"); eval "$spec"
  log "$about"
  if [ -n "$reuse" ]; then  # a file, or a folder when the stage ran sharded (FSDP): copied atomically
    local to=$OUT/seed_$1/$2/ckpt_$3.pt
    mkdir -p "$(dirname "$to")" && step rm -rf "$to.tmp" && step cp -pr "$reuse" "$to.tmp"
    step rm -rf "$to" && step mv "$to.tmp" "$to"
  elif [ "$DRY_RUN" = 1 ]; then
    echo "$layout"; echo "  ${cmd[*]}"
    [ "$fits" = 1 ] || UNFIT+=("$3")
  else
    "${cmd[@]}"
  fi
}
UNFIT=()  # dry run: stages that do not fit
# Before each stage: stage k of all seeds' training stages, the time so far and the whole run's ETA
next_stage() {  # next_stage LABEL: the progress line of the next stage
  STAGE=$((STAGE + 1))
  log "$("$PYTHON" family.py progress "$STARTED" "$FLOPS_BEFORE" "[stage $STAGE/$STAGES] $1")"
}
up_to_date() {  # up_to_date TARGET FILE...: TARGET is newer than every FILE
  local target=$1 f; shift
  for f in "$@"; do [ "$target" -nt "$f" ] || return 1; done
}

# --- plan: each stage's tokens and recipe (flops.py); every stage must fit before the first starts
"$PYTHON" family.py plan | tee "$OUT/plan.txt"
[ "$DRY_RUN" = 1 ] || "$PYTHON" family.py check  # the dry run lists them all

# --- data ----------------------------------------------------------------------------------------
[ -z "$DATASET" ] || step "$PYTHON" data/prepare.py --dataset "$DATASET" --tokenizer "$TOKENIZER" --out "$DATA"

STARTED=$(date +%s) STAGE=0
FLOPS_BEFORE=$("$PYTHON" family.py progress "$STARTED" 0)  # trained by an earlier, interrupted run

# --- the families, seed by seed --------------------------------------------------------------------
reports=()
for seed in $SEEDS; do
  run=$OUT/seed_$seed
  log "seed $seed: progressive family ($METHOD, depth $DEPTH) in $run/progressive"
  ckpts=() baseline=()
  for size in ${MEMBERS//,/ }; do  # the smallest trains from scratch; each next one is grown from it
    next_stage "seed $seed: progressive $size"
    [ "$size" = "${MEMBERS%%,*}" ] || grow "$seed" "$size"
    train "$seed" progressive "$size"
    ckpts+=("$run/progressive/ckpt_$size.pt")
  done
  members=(--ckpt "${ckpts[@]}")

  if [ "$SKIP_INDEPENDENT" = 0 ]; then  # the same members, each from scratch on its full budget
    log "seed $seed: independent members in $run/independent"
    for size in ${MEMBERS//,/ }; do
      next_stage "seed $seed: independent $size"
      train "$seed" independent "$size"
      baseline+=("$run/independent/ckpt_$size.pt")
    done
    members+=(--baseline "${baseline[@]}")
  fi

  log "$("$PYTHON" family.py progress "$STARTED" "$FLOPS_BEFORE" \
    "[after stage $STAGE/$STAGES] seed $seed: evaluation -> $run/report")"
  if up_to_date "$run/report/report.json" "${ckpts[@]}" "${baseline[@]}"; then
    log "seed $seed: report is up to date"
  else
    step "$PYTHON" evaluate.py "${members[@]}" --val_data "$DATA" --limit "$EVAL_LIMIT" --plan "$OUT/plan.json" \
      --out "$run/report"
  fi
  reports+=("$run/report")
done

if [ "${#reports[@]}" -gt 1 ]; then  # several seeds: one report over all of them
  jsons=("${reports[@]/%//report.json}")
  if up_to_date "$OUT/report/report.json" "${jsons[@]}"; then
    log "the report over ${#reports[@]} seeds is up to date"
  else
    step "$PYTHON" evaluate.py --combine "${jsons[@]}" --out "$OUT/report"
  fi
  reports+=("$OUT/report")
fi
log "done: $OUT"
if [ "$DRY_RUN" = 1 ]; then
  [ ${#UNFIT[@]} -eq 0 ] || { echo "error: stages ${UNFIT[*]} do not fit $NPROC GPUs of $GPU_MEM GB" \
    "(python flops.py --check); use more GPUs" >&2; exit 1; }
  exit 0
fi
# the last lines: where the reports are and what the last one (over all seeds) found
for r in "${reports[@]}"; do log "report: $r/report.md"; done
verdict=$("$PYTHON" family.py verdict "${reports[-1]}")
[ -z "$verdict" ] || log "verdict: $verdict"
