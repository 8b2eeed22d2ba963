#!/usr/bin/env bash
# Train a model family progressively (smallest -> expand -> train -> ... -> largest) and, with the
# same recipe, every member independently from scratch; then evaluate both families.
#
#   bash run_family.sh                         # tiny family on CPU (offline when ../shared exists)
#   FAMILY=paper NPROC=8 CHINCHILLA=2 bash run_family.sh
#   bash run_family.sh --family tiny --seeds "1 2" --lr-schedule fixed --out runs/fixed
#
# Options, as environment variables or as flags (--name value, name in lower case, '-' for '_'):
#   FAMILY=tiny|paper|gpt2   CHINCHILLA=1   LR_SCHEDULE=adjusted|fixed   SEED=1337 or SEEDS="1 2 3"
#   METHOD=aki|fpi   DEPTH=stack|interpolate|zero   OPT_STATE=0|1 (grow AdamW moments too)
#   NOISE=0.1 (expand.py --noise; 0: copies split exactly)   AKI_TOP=noise|below (expand.py --aki-top)
#   MEMBERS=20k,250k (a sub-chain: skip members)   SCHEDULE=cosine|wsd
#   GROW_FROM=final|stable (wsd: grow each member from its predecessor's weights before the decay)
#   STAGE_FRACTIONS=1,1,2 (split of the budget among grown stages)   BUDGET_SCALE=1 (x largest's FLOPs)
#   NPROC=1 (torchrun when > 1)   GPU_MEM=80 (GB per GPU)   DRY_RUN=1 (print each stage's layout and command)
#   DATA=folder from data/prepare.py   OUT=runs/<family>
#   SKIP_INDEPENDENT=1 (progressive only)   QUICK=1 (a short run, for CI)   EVAL_LIMIT=items per task
# Re-running continues: finished stages (checkpoint marked done) are skipped, a killed one resumes.
set -euo pipefail
cd "$(dirname "$0")"

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*=*) key="${1%%=*}"; val="${1#*=}"; shift ;;
    --*) [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }; key="$1"; val="$2"; shift 2 ;;
    *) echo "error: unknown argument '$1' (see bash run_family.sh --help)" >&2; exit 2 ;;
  esac
  key="$(echo "${key#--}" | tr 'a-z-' 'A-Z_')"
  case "$key" in
    FAMILY|CHINCHILLA|LR_SCHEDULE|SEED|SEEDS|METHOD|DEPTH|OPT_STATE|MEMBERS|SCHEDULE|NPROC|DATA|OUT|\
SKIP_INDEPENDENT|QUICK|EVAL_LIMIT|EVAL_TOKENS|STAGE_FRACTIONS|BUDGET_SCALE|GROW_FROM|NOISE|AKI_TOP|GPU_MEM|DRY_RUN) printf -v "$key" '%s' "$val" ;;
    *) echo "error: unknown option --${key,,} (see bash run_family.sh --help)" >&2; exit 2 ;;
  esac
done

FAMILY=${FAMILY:-tiny}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then CHINCHILLA=${CHINCHILLA:-0.05}; EVAL_LIMIT=${EVAL_LIMIT:-20}; EVAL_TOKENS=${EVAL_TOKENS:-8192}; fi
CHINCHILLA=${CHINCHILLA:-1}
LR_SCHEDULE=${LR_SCHEDULE:-adjusted}
SEEDS=${SEEDS:-${SEED:-1337}}
METHOD=${METHOD:-aki}
DEPTH=${DEPTH:-stack}
NOISE=${NOISE:-0.1}
AKI_TOP=${AKI_TOP:-noise}
OPT_STATE=${OPT_STATE:-0}
SCHEDULE=${SCHEDULE:-cosine}
GROW_FROM=${GROW_FROM:-final}
case "$GROW_FROM/$SCHEDULE" in
  final/*|stable/wsd) ;;
  stable/*) echo "error: GROW_FROM=stable needs SCHEDULE=wsd: only WSD has a stable phase to grow from" >&2; exit 2 ;;
  *) echo "error: GROW_FROM is final or stable, not '$GROW_FROM'" >&2; exit 2 ;;
esac
NPROC=${NPROC:-1}
[[ "$NPROC" =~ ^[1-9][0-9]*$ ]] || { echo "error: NPROC must be a whole number >= 1, not '$NPROC'" >&2; exit 2; }
GPU_MEM=${GPU_MEM:-80}
DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-runs/$FAMILY}
EVAL_LIMIT=${EVAL_LIMIT:-200}
EVAL_TOKENS=${EVAL_TOKENS:-32768}  # validation tokens per periodic evaluation during training
SHARED=${PGF_SHARED:-../shared}
PY=${PYTHON:-python3}
# OpenMP threads that spin while waiting lose most of their time when the cores are shared
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run_family.log"; }
# DRY_RUN=1: data preparation, growth and evaluation are printed, not run (train() prints its stage)
step() { if [ "$DRY_RUN" = 1 ]; then echo "  (dry run) $*"; else "$@"; fi; }

# --- data -------------------------------------------------------------------------------------
TOKENIZER=$($PY -c "from model import FAMILIES, PRESETS; import sys; f=sys.argv[1]; \
print(PRESETS[FAMILIES[f][0]].tokenizer if f in FAMILIES else sys.exit('error: unknown family ' + repr(f)))" "$FAMILY")
if [ -z "${DATA:-}" ]; then
  if [ -d "$SHARED/data/corpus/openstax" ]; then
    DATA=data/openstax_$TOKENIZER
    [ -d "$SHARED/tiktoken_cache" ] && export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$SHARED/tiktoken_cache}
    step $PY data/prepare.py --dataset "$SHARED/data/corpus/openstax" --tokenizer "$TOKENIZER" --out "$DATA"
  else
    DATA=data/fineweb_$TOKENIZER
    step $PY data/prepare.py --dataset fineweb-edu --tokenizer "$TOKENIZER" --out "$DATA"
  fi
fi

# --- plan ---------------------------------------------------------------------------------------
PLAN_ARGS=(--family "$FAMILY" --chinchilla "$CHINCHILLA" --lr-schedule "$LR_SCHEDULE")
[ -n "${MEMBERS:-}" ] && PLAN_ARGS+=(--members "$MEMBERS")
[ -n "${STAGE_FRACTIONS:-}" ] && PLAN_ARGS+=(--stage-fractions "$STAGE_FRACTIONS")
[ -n "${BUDGET_SCALE:-}" ] && PLAN_ARGS+=(--budget-scale "$BUDGET_SCALE")
$PY flops.py "${PLAN_ARGS[@]}" --json "$OUT/plan.json" | tee "$OUT/plan.txt"
# every stage must fit NPROC GPUs of GPU_MEM GB before the first one starts (the dry run lists them all)
[ "$DRY_RUN" = 1 ] || $PY flops.py "${PLAN_ARGS[@]}" --check --nproc "$NPROC" --gpu-mem "$GPU_MEM"

# One line per stage of the plan: size tokens lr min_lr warmup_tokens batch_size seq_len
stages() {
  $PY -c "import json, sys
for s in json.load(open(sys.argv[1]))[sys.argv[2]]:
    print(s['size'], s['tokens'], s['lr'], s['min_lr'], s['warmup_tokens'], s['batch_size'], s['seq_len'])" \
    "$OUT/plan.json" "$1"
}

train() {  # train DIR SIZE TOKENS LR MIN_LR WARMUP_TOKENS BATCH SEQ_LEN SEED [train.py flags]
  local dir=$1 size=$2 tokens=$3 lr=$4 min_lr=$5 warmup=$6 batch=$7 seq=$8 seed=$9; shift 9
  # micro-batch x accumulation x NPROC = the plan's batch; flops.py's memory plan chooses the
  # micro-batch (strategy, activation checkpointing) for NPROC GPUs of GPU_MEM GB
  local layout
  layout=($($PY flops.py --layout "$size" --global-batch "$batch" --nproc "$NPROC" --gpu-mem "$GPU_MEM"))
  local micro=${layout[0]} accum=${layout[1]} steps_warmup=$(( warmup / (batch * seq) ))
  local launcher=($PY)
  [ "$NPROC" -gt 1 ] && launcher=(torchrun --standalone --nproc_per_node="$NPROC")
  local cmd=("${launcher[@]}" train.py --size "$size" --data "$DATA" --tokens "$tokens" --lr "$lr"
    --min_lr "$min_lr" --warmup "$steps_warmup" --batch_size "$micro" --grad_accum "$accum" --seq_len "$seq"
    --seed "$seed" --schedule "$SCHEDULE" --eval_tokens "$EVAL_TOKENS" --out "$dir/$size"
    --ckpt "$dir/ckpt_$size.pt" --resume "$@")
  if [ "$DRY_RUN" = 1 ]; then
    local fits=""; [ "${layout[6]}" = 1 ] || fits=" -- DOES NOT FIT"
    echo "stage $size: micro-batch $micro x accumulation $accum x $NPROC processes = $batch; ${layout[2]}," \
      "activation checkpointing ${layout[3]}; planned ${layout[4]} GB of ${layout[5]} GB usable per GPU$fits"
    echo "  ${cmd[*]}"
    [ "${layout[6]}" = 1 ] || UNFIT+=("$size")
    return
  fi
  "${cmd[@]}"
}
UNFIT=()  # dry run: stages that do not fit

for seed in $SEEDS; do
  run="$OUT/seed_$seed"
  prog="$run/progressive"
  mkdir -p "$prog"
  log "seed $seed: progressive family ($METHOD, depth $DEPTH) in $prog"
  prev=""
  last=$(stages progressive | tail -n 1 | cut -d' ' -f1)
  while read -r size tokens lr min_lr warmup batch seq; do
    extra=()
    if [ -n "$prev" ]; then
      grown="$prog/ckpt_${prev}_expanded.pt"
      if [ ! -f "$grown" ]; then  # written atomically: present means complete
        opt=(); [ "$OPT_STATE" = 1 ] && opt=(--optimizer-state)
        src="$prog/ckpt_$prev.pt"; [ "$GROW_FROM" = stable ] && src="$prog/ckpt_${prev}_stable.pt"
        step $PY expand.py --src "$src" --size "$size" --method "$METHOD" --depth "$DEPTH" \
          --noise "$NOISE" --aki-top "$AKI_TOP" --seed "$seed" --out "$grown" "${opt[@]}"
      fi
      extra+=(--init "$grown")
    fi
    # the member is still the decayed model; its successor grows from the weights before the decay
    [ "$GROW_FROM" = stable ] && [ "$size" != "$last" ] && extra+=(--stable_ckpt "$prog/ckpt_${size}_stable.pt")
    log "stage $size: $tokens tokens, max LR $lr"
    train "$prog" "$size" "$tokens" "$lr" "$min_lr" "$warmup" "$batch" "$seq" "$seed" "${extra[@]}"
    prev=$size
  done < <(stages progressive)

  ckpts=()
  for size in $(stages progressive | cut -d' ' -f1); do ckpts+=("$prog/ckpt_$size.pt"); done
  baseline=()
  if [ "${SKIP_INDEPENDENT:-0}" != 1 ]; then
    indep="$run/independent"
    log "seed $seed: independent members in $indep"
    first=$(stages progressive | sed -n 1p)  # sed reads to the end: no broken pipe
    while read -r size tokens lr min_lr warmup batch seq; do
      if [ "$size $tokens $lr $min_lr $warmup $batch $seq" = "$first" ]; then
        # the smallest member is trained exactly as the first progressive stage: reuse it
        log "member $size: the same run as progressive stage $size, reused"
        # a file, or a folder when the stage ran sharded (FSDP)
        mkdir -p "$indep" && step rm -rf "$indep/ckpt_$size.pt.tmp" && step cp -pr "$prog/ckpt_$size.pt" "$indep/ckpt_$size.pt.tmp"
        step rm -rf "$indep/ckpt_$size.pt" && step mv "$indep/ckpt_$size.pt.tmp" "$indep/ckpt_$size.pt"
      else
        log "member $size: $tokens tokens from scratch, max LR $lr"
        train "$indep" "$size" "$tokens" "$lr" "$min_lr" "$warmup" "$batch" "$seq" "$seed"
      fi
      baseline+=("$indep/ckpt_$size.pt")
    done < <(stages independent)
    baseline=(--baseline "${baseline[@]}")
  fi

  log "seed $seed: evaluation -> $run/report"
  fresh=1
  for c in "${ckpts[@]}" "${baseline[@]:1}"; do [ "$run/report/report.json" -nt "$c" ] || fresh=0; done
  if [ "$fresh" = 1 ]; then
    log "seed $seed: report is up to date"
  else
    step $PY evaluate.py --ckpt "${ckpts[@]}" "${baseline[@]}" --val-data "$DATA" --limit "$EVAL_LIMIT" \
      --plan "$OUT/plan.json" --out "$run/report"
  fi
done
log "done: $OUT"
if [ ${#UNFIT[@]} -gt 0 ]; then
  echo "error: stages ${UNFIT[*]} do not fit $NPROC GPUs of $GPU_MEM GB (python flops.py --check); use more GPUs" >&2
  exit 1
fi
