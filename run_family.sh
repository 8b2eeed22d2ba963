#!/usr/bin/env bash
# Train a model family progressively (smallest -> expand -> train -> ... -> largest) and, with the
# same recipe, every member independently from scratch; then evaluate both families.
#
#   bash run_family.sh                         # tiny family on CPU (offline when ../shared exists)
#   FAMILY=paper NPROC=8 CHINCHILLA=2 bash run_family.sh
#   bash run_family.sh --family tiny --seeds "1 2" --lr_schedule fixed --out runs/fixed
#
# Options, as environment variables or as flags (--name value, name in lower case: --lr_schedule; '-' works too):
#   FAMILY=tiny|paper|gpt2|tiny-llama|llama   CHINCHILLA=1   LR_SCHEDULE=adjusted|fixed   SEED=1337 or SEEDS="1 2 3"
#   METHOD=aki|fpi   DEPTH=stack|interpolate|zero   OPT_STATE=0|1 (grow AdamW moments too)
#   NOISE=0.1 (expand.py --noise; 0: copies split exactly)   AKI_TOP=noise|below (expand.py --aki_top)
#   MEMBERS=20k,250k (a sub-chain: skip members)   SCHEDULE=cosine|wsd
#   GROW_FROM=final|stable (wsd: grow each member from its predecessor's weights before the decay)
#   STAGE_FRACTIONS=1,1,2 (split of the budget among grown stages)   BUDGET_SCALE=1 (x largest's FLOPs)
#   NPROC=1 (torchrun when > 1)   GPU_MEM=80 (GB per GPU)   DRY_RUN=1 or --dry-run (print each stage's layout and command)
#   DATA=folder from data/prepare.py   OUT=runs/<family>
#   SKIP_INDEPENDENT=1 (progressive only)   QUICK=1 (a short run, for CI)   EVAL_LIMIT=items per task
# Re-running continues: finished stages (checkpoint marked done) are skipped, a killed one resumes.
# Every option is checked before anything runs; a second run on the same OUT is refused (a lock).
# Before each stage a line gives the overall progress: stage k of all seeds' training stages, and the
# ETA of the whole run from the plan's FLOPs still to train and the FLOPs per wall-clock second so far.
set -euo pipefail
cd "$(dirname "$0")"

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*=*) key="${1%%=*}"; val="${1#*=}"; shift ;;
    --dry-run|--dry_run) key=$1; val=1; shift  # alone: on
      if [[ ${1:-} =~ ^[01]$ ]]; then val=$1; shift; fi ;;
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
NPROC=${NPROC:-1}
GPU_MEM=${GPU_MEM:-80}
DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-runs/$FAMILY}
SKIP_INDEPENDENT=${SKIP_INDEPENDENT:-0}
EVAL_LIMIT=${EVAL_LIMIT:-200}
EVAL_TOKENS=${EVAL_TOKENS:-32768}  # validation tokens per periodic evaluation during training
SHARED=${PGF_SHARED:-../shared}
PY=${PYTHON:-python3}
# OpenMP threads that spin while waiting lose most of their time when the cores are shared
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

# --- options: all checked here, before a stage trains (FAMILY, MEMBERS and the budget by flops.py) --
die() { echo "error: $*" >&2; exit 2; }
one_of() {  # one_of NAME VALUE CHOICE...
  local name=$1 value=$2 c; shift 2
  for c in "$@"; do [ "$value" = "$c" ] && return 0; done
  die "$name is one of $*, not '$value'"
}
matches() {  # matches NAME VALUE REGEX WHAT: the whole VALUE matches
  [[ $2 =~ ^($3)$ ]] || die "$1 must be $4, not '$2'"
}
POS_INT='[1-9][0-9]*' NUM='([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?'
one_of METHOD "$METHOD" aki fpi
one_of DEPTH "$DEPTH" stack interpolate zero
one_of SCHEDULE "$SCHEDULE" cosine wsd
one_of LR_SCHEDULE "$LR_SCHEDULE" adjusted fixed
one_of GROW_FROM "$GROW_FROM" final stable
[ "$GROW_FROM/$SCHEDULE" = stable/cosine ] &&
  die "GROW_FROM=stable needs SCHEDULE=wsd: only WSD has a stable phase to grow from"
one_of AKI_TOP "$AKI_TOP" noise below
one_of OPT_STATE "$OPT_STATE" 0 1
one_of QUICK "$QUICK" 0 1
one_of SKIP_INDEPENDENT "$SKIP_INDEPENDENT" 0 1
matches NPROC "$NPROC" "$POS_INT" "a positive integer (processes per node)"
matches GPU_MEM "$GPU_MEM" "$NUM" "a number of GB per GPU"
one_of DRY_RUN "$DRY_RUN" 0 1
matches EVAL_LIMIT "$EVAL_LIMIT" "$POS_INT" "a positive integer"
matches EVAL_TOKENS "$EVAL_TOKENS" "$POS_INT" "a positive integer"
matches NOISE "$NOISE" "$NUM" "a number >= 0"
matches CHINCHILLA "$CHINCHILLA" "$NUM" "a number > 0"
matches BUDGET_SCALE "${BUDGET_SCALE:-1}" "$NUM" "a number > 0"
matches STAGE_FRACTIONS "${STAGE_FRACTIONS:-1}" "$NUM(,$NUM)*" "comma-separated numbers"
[ -n "${SEEDS// }" ] || die "SEEDS is empty: give one or more seeds, e.g. SEEDS=\"1 2 3\""
declare -A seen_seeds=()  # a seed given twice would train and count the same runs twice
for seed in $SEEDS; do
  matches SEEDS "$seed" '[0-9]{1,18}' "integers >= 0 of at most 18 digits"
  [ -z "${seen_seeds[$((10#$seed))]:-}" ] || die "SEEDS lists seed $((10#$seed)) twice; give each seed once"
  seen_seeds[$((10#$seed))]=1
done
[ -z "${DATA:-}" ] || [ "$DRY_RUN" = 1 ] || [ -f "$DATA/meta.json" ] ||
  die "DATA=$DATA is not a folder made by data/prepare.py (no meta.json)"

# One run per OUT: a second one would train the same stages at once and interleave their metrics.
# The lock is held until this script and the trainings it started have exited.
command -v flock > /dev/null || die "flock (util-linux) is needed: it keeps two runs off the same OUT"
mkdir -p "$OUT"
exec 9<>"$OUT/.lock"
flock -n 9 || die "another run_family.sh (PID $(cat "$OUT/.lock")), or a training it started, is running" \
  "on $OUT; wait for it to end or choose another OUT"
echo $$ > "$OUT/.lock"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/run_family.log"; }
# DRY_RUN=1: data preparation, growth and evaluation are printed, not run (train() prints its stage)
step() { if [ "$DRY_RUN" = 1 ]; then echo "  (dry run) $*"; else "$@"; fi; }

# --- plan ---------------------------------------------------------------------------------------
PLAN_ARGS=(--family "$FAMILY" --chinchilla "$CHINCHILLA" --lr_schedule "$LR_SCHEDULE")
[ -n "${MEMBERS:-}" ] && PLAN_ARGS+=(--members "$MEMBERS")
[ -n "${STAGE_FRACTIONS:-}" ] && PLAN_ARGS+=(--stage_fractions "$STAGE_FRACTIONS")
[ -n "${BUDGET_SCALE:-}" ] && PLAN_ARGS+=(--budget_scale "$BUDGET_SCALE")
$PY flops.py "${PLAN_ARGS[@]}" --json "$OUT/plan.json" | tee "$OUT/plan.txt"
# every stage must fit NPROC GPUs of GPU_MEM GB before the first one starts (the dry run lists them all)
[ "$DRY_RUN" = 1 ] || $PY flops.py "${PLAN_ARGS[@]}" --check --nproc "$NPROC" --gpu_mem "$GPU_MEM"

# One line per stage of the plan: size tokens lr min_lr warmup_tokens batch_size seq_len
stages() {
  $PY -c "import json, sys
for s in json.load(open(sys.argv[1]))[sys.argv[2]]:
    print(s['size'], s['tokens'], s['lr'], s['min_lr'], s['warmup_tokens'], s['batch_size'], s['seq_len'])" \
    "$OUT/plan.json" "$1"
}
# read here, not in `while ... < <(stages ...)`: set -e stops the script when a plain assignment fails
PROGRESSIVE=$(stages progressive)
INDEPENDENT=$(stages independent)
batch=$(cut -d' ' -f6 <<< "$PROGRESSIVE" | head -n 1)
(( batch % NPROC == 0 )) || die "NPROC=$NPROC does not divide the batch of $batch sequences"

# --- data -------------------------------------------------------------------------------------
TOKENIZER=$($PY -c "from model import FAMILIES, PRESETS; import sys
print(PRESETS[FAMILIES[sys.argv[1]][0]].tokenizer)" "$FAMILY")
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

train() {  # train DIR SIZE TOKENS LR MIN_LR WARMUP_TOKENS BATCH SEQ_LEN SEED [train.py flags]
  local dir=$1 size=$2 tokens=$3 lr=$4 min_lr=$5 warmup=$6 batch=$7 seq=$8 seed=$9; shift 9
  # micro-batch x accumulation x NPROC = the plan's batch; flops.py's memory plan chooses the
  # micro-batch, strategy and activation checkpointing for NPROC GPUs of GPU_MEM GB, once: train.py
  # gets all of it (and the budget), so it runs the layout printed here (train.py --dry_run says so)
  local layout
  layout=($($PY flops.py --layout "$size" --global_batch "$batch" --nproc "$NPROC" --gpu_mem "$GPU_MEM"))
  local micro=${layout[0]} accum=${layout[1]} fsdp=off steps_warmup=$(( warmup / (batch * seq) ))
  [ "${layout[2]}" = fsdp ] && fsdp=on
  local launcher=($PY)
  [ "$NPROC" -gt 1 ] && launcher=(torchrun --standalone --nproc_per_node="$NPROC")
  local cmd=("${launcher[@]}" train.py --size "$size" --data "$DATA" --tokens "$tokens" --lr "$lr"
    --min_lr "$min_lr" --warmup "$steps_warmup" --batch_size "$micro" --grad_accum "$accum" --fsdp "$fsdp"
    --activation_checkpointing "${layout[3]}" --gpu_mem "$GPU_MEM" --seq_len "$seq"
    --seed "$seed" --schedule "$SCHEDULE" --eval_tokens "$EVAL_TOKENS" --out "$dir/$size"
    --ckpt "$dir/ckpt_$size.pt" --resume "${INTERVALS[@]}" "$@")
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
# the GPU families' stages take hours to days: a log line every minute, a checkpoint every 30 minutes
INTERVALS=(); [ "$FAMILY" = tiny ] || INTERVALS=(--log_every_min 1 --ckpt_every_min 30)

# The overall progress line before each stage: stage k of all seeds' training stages (the reused
# smallest independent member counts; expansions and evaluations do not); the ETA is the plan's FLOPs
# still to train at the FLOPs/s of this invocation so far (FLOPs read from the stages' metrics.jsonl,
# time on the wall clock, so expansions and evaluations slow it down as they do the run).
# With no LABEL it prints the FLOPs trained so far instead.
progress() {  # progress [LABEL]
  $PY -c "import json, sys, time
out, seeds, kinds, started, flops_before, label = sys.argv[1:]
plan = json.load(open(out + '/plan.json'))
def trained(seed, kind, size):  # FLOPs a stage has trained so far; a killed run may leave half a line
    try:
        lines = open(f'{out}/seed_{seed}/{kind}/{size}/metrics.jsonl').read().splitlines()
    except FileNotFoundError:
        return 0
    return max([json.loads(line).get('flops', 0) for line in lines if line.endswith('}')] + [0])
stages = [(seed, kind, s) for seed in seeds.split() for kind in kinds.split() for s in plan[kind]]
done = sum(trained(seed, kind, s['size']) for seed, kind, s in stages)
if not label:
    print(done)
    sys.exit()
todo = sum(s['flops'] for _, kind, s in stages if not (kind == 'independent' and s == plan['progressive'][0])) - done
elapsed = time.time() - float(started)
rate = (done - float(flops_before)) / max(elapsed, 1)
eta = f'~{todo / rate / 60:.1f} min' if rate > 0 else 'known after the first stage'
print(f'{label} | elapsed {elapsed / 60:.1f} min | ETA of the whole run {eta}')" \
    "$OUT" "$SEEDS" "$KINDS" "$STARTED" "$FLOPS_BEFORE" "${1:-}"
}
KINDS=progressive; [ "$SKIP_INDEPENDENT" = 1 ] || KINDS="progressive independent"
STARTED=$(date +%s) FLOPS_BEFORE=0
FLOPS_BEFORE=$(progress)
STAGE=0 STAGES=$(( $(wc -w <<< "$SEEDS") * $(wc -l <<< "$PROGRESSIVE") * $(wc -w <<< "$KINDS") ))
next_stage() {  # next_stage LABEL: log the progress line of the next stage
  STAGE=$((STAGE + 1))
  log "$(progress "[stage $STAGE/$STAGES] $1")"
}

up_to_date() {  # up_to_date TARGET FILE...: TARGET is newer than every FILE
  local target=$1 f; shift
  for f in "$@"; do [ "$target" -nt "$f" ] || return 1; done
}

reports=()
for seed in $SEEDS; do
  run="$OUT/seed_$seed"
  prog="$run/progressive"
  mkdir -p "$prog"
  log "seed $seed: progressive family ($METHOD, depth $DEPTH) in $prog"
  prev=""
  last=$(tail -n 1 <<< "$PROGRESSIVE" | cut -d' ' -f1)
  while read -r size tokens lr min_lr warmup batch seq; do
    next_stage "seed $seed: progressive $size"
    extra=()
    if [ -n "$prev" ]; then
      grown="$prog/ckpt_${prev}_expanded.pt"
      # --reuse keeps a grown checkpoint only if it was grown from the source as it is now (a re-run
      # after the source stage was stopped and finished grows again); expand.py refuses an unfinished source
      opt=(); [ "$OPT_STATE" = 1 ] && opt=(--optimizer_state)
      src="$prog/ckpt_$prev.pt"; [ "$GROW_FROM" = stable ] && src="$prog/ckpt_${prev}_stable.pt"
      step $PY expand.py --src "$src" --size "$size" --method "$METHOD" --depth "$DEPTH" \
        --noise "$NOISE" --aki_top "$AKI_TOP" --seed "$seed" --out "$grown" --reuse "${opt[@]}"
      extra+=(--init "$grown")
    fi
    # the member is still the decayed model; its successor grows from the weights before the decay
    [ "$GROW_FROM" = stable ] && [ "$size" != "$last" ] && extra+=(--stable_ckpt "$prog/ckpt_${size}_stable.pt")
    log "stage $size: $tokens tokens, max LR $lr"
    train "$prog" "$size" "$tokens" "$lr" "$min_lr" "$warmup" "$batch" "$seq" "$seed" "${extra[@]}"
    prev=$size
  done <<< "$PROGRESSIVE"

  ckpts=()
  for size in $(cut -d' ' -f1 <<< "$PROGRESSIVE"); do ckpts+=("$prog/ckpt_$size.pt"); done
  baseline=()
  if [ "$SKIP_INDEPENDENT" != 1 ]; then
    indep="$run/independent"
    log "seed $seed: independent members in $indep"
    first=$(head -n 1 <<< "$PROGRESSIVE")
    while read -r size tokens lr min_lr warmup batch seq; do
      next_stage "seed $seed: independent $size"
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
    done <<< "$INDEPENDENT"
    baseline=(--baseline "${baseline[@]}")
  fi

  log "$(progress "[after stage $STAGE/$STAGES] seed $seed: evaluation -> $run/report")"
  if up_to_date "$run/report/report.json" "${ckpts[@]}" "${baseline[@]:1}"; then
    log "seed $seed: report is up to date"
  else
    step $PY evaluate.py --ckpt "${ckpts[@]}" "${baseline[@]}" --val_data "$DATA" --limit "$EVAL_LIMIT" \
      --plan "$OUT/plan.json" --out "$run/report"
  fi
  reports+=("$run/report")
done

if [ "${#reports[@]}" -gt 1 ]; then  # several seeds: one report over all of them
  jsons=("${reports[@]/%//report.json}")
  if up_to_date "$OUT/report/report.json" "${jsons[@]}"; then
    log "the report over ${#reports[@]} seeds is up to date"
  else
    step $PY evaluate.py --combine "${jsons[@]}" --out "$OUT/report"
  fi
  reports+=("$OUT/report")
fi
log "done: $OUT"
if [ "$DRY_RUN" = 1 ]; then
  [ ${#UNFIT[@]} -eq 0 ] ||
    { echo "error: stages ${UNFIT[*]} do not fit $NPROC GPUs of $GPU_MEM GB (python flops.py --check); use more GPUs" >&2; exit 1; }
  exit 0
fi
# the last lines: where the reports are and what the last one (over all seeds) found
for r in "${reports[@]}"; do log "report: $r/report.md"; done
verdict=$($PY -c "import json, sys; print(json.load(open(sys.argv[1])).get('verdict', ''))" \
  "${reports[-1]}/report.json")
[ -z "$verdict" ] || log "verdict: $verdict"
