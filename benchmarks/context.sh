#!/usr/bin/env bash
# Intelligent Masking (issue 12): `--masking dqn` against `--masking random` on BreastMNIST (no labels), 3
# pretraining seeds at two budgets, then every encoder transferred to PneumoniaMNIST (16/64/256 images per
# class, 5 identical subsets) with rlmask's linear probe and the reference's head; dqn - random paired by
# seed. Resumable: finished pretrainings and transfers are skipped. CPU; never in CI.
#
#   bash benchmarks/context.sh [OUT]      (default runs/context); results: benchmarks/results/context/
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/context}
RLMASK=${RLMASK:-rlmask}
PYTHON=${PYTHON:-python}
RES=benchmarks/results/context
mkdir -p "$RES"
COMMON=(--data ../shared/data/breastmnist.npz --model context_encoder --batch-size 16 --optimizer adam --lr 1e-3
        --weight-decay 0 --schedule multistep --gamma 0.33 --no-progress)
for budget in "8:3 5" "40:15 25"; do
  epochs=${budget%%:*}; milestones=${budget#*:}
  ckpts=(); labels=()
  for seed in 0 1 2; do
    for masking in dqn random; do
      dir="$OUT/ep$epochs/pretrain-$masking-s$seed"
      if [ ! -f "$dir/metrics.json" ]; then
        resume=(); [ -f "$dir/last.pt" ] && resume=(--resume "$dir/last.pt")
        start=$SECONDS
        # shellcheck disable=SC2086
        "$RLMASK" pretrain --method context --masking "$masking" "${COMMON[@]}" --epochs "$epochs" \
          --milestones $milestones --seed "$seed" --out "$dir" "${resume[@]}"
        echo "pretrain ep$epochs $masking s$seed: $(( SECONDS - start )) s" | tee -a "$OUT/wall.txt"
      fi
      ckpts+=("$dir/heated.pt"); labels+=("$masking-s$seed")
    done
  done
  for head in linear reference; do
    dir="$OUT/ep$epochs/transfer-$head"
    if [ ! -f "$dir/transfer.json" ]; then
      start=$SECONDS
      "$RLMASK" transfer "${ckpts[@]}" --label "${labels[@]}" --data ../shared/data/pneumoniamnist.npz \
        --shots 16,64,256 --repeats 5 --head "$head" --no-progress --out "$dir"
      echo "transfer ep$epochs $head: $(( SECONDS - start )) s" | tee -a "$OUT/wall.txt"
    fi
    cp "$dir/transfer.md" "$RES/ep$epochs-transfer-$head.md"
    "$PYTHON" benchmarks/paired_transfer.py "$dir/transfer.json" dqn random --out "$RES/ep$epochs-$head-dqn-minus-random.json" \
      | tee "$RES/ep$epochs-$head-dqn-minus-random.md"
  done
  : > "$RES/ep$epochs-pretrain.jsonl"
  for seed in 0 1 2; do
    for masking in dqn random; do
      "$PYTHON" - "$OUT/ep$epochs/pretrain-$masking-s$seed" <<'PY' >> "$RES/ep$epochs-pretrain.jsonl"
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
metrics = json.loads((run / "metrics.json").read_text())
last = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()][-1]
print(json.dumps({"run": run.name, "val_rec_error": metrics["val"]["rec_error"], "test_rec_error": metrics["test"]["rec_error"],
                  "test_rec_error_image": metrics["test"]["rec_error_image"], "train_block_error_last_epoch": last["losses/rec"]}))
PY
    done
  done
done
cp "$OUT/wall.txt" "$RES/wall.txt"
