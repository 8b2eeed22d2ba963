#!/usr/bin/env bash
# The max-LR sweep behind flops.FAMILY_LR["tiny"]: the smallest and the largest tiny member trained
# alone at several max LRs (CHINCHILLA x 20 tokens/param, the family recipe otherwise); prints the
# final validation loss of each. Used by the adjusted LR schedule (largest -> smallest, linear).
#   bash experiments/lr_sweep.sh            # ~15 min on 2 CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/lr_sweep}; DATA=${DATA:-data/openstax_bytes}; CHINCHILLA=${CHINCHILLA:-0.5}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
for size in 20k 250k; do
  tokens=$(python3 -c "from model import PRESETS, count_params; print(int(20 * $CHINCHILLA * count_params(PRESETS['$size'])['total']))")
  warmup=$(( (tokens / 4096 * 2 + 50) / 100 ))  # 2% of the steps (16 x 256 tokens), as when it was measured
  for lr in ${LRS:-1e-3 2e-3 4e-3 8e-3 1.6e-2 3.2e-2}; do
    python3 train.py --size "$size" --data "$DATA" --tokens "$tokens" --lr "$lr" --eval_tokens 65536 \
      --schedule cosine --warmup "$((warmup > 0 ? warmup : 1))" --batch_size 16 \
      --out "$OUT/${size}_lr$lr" --resume > /dev/null
  done
done
python3 - "$OUT" <<'PY'
import sys
from pathlib import Path
import checkpoint
print(f"{'run':>16s} {'final val loss':>15s}")
for p in sorted(Path(sys.argv[1]).glob("*/ckpt.pt")):
    h = checkpoint.load(p)["train"]["history"]
    print(f"{p.parent.name:>16s} {[r['val_loss'] for r in h if 'val_loss' in r][-1]:15.4f}")
PY
