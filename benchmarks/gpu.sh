#!/usr/bin/env bash
# The CUDA paths of rlmask, checked and timed on one GPU in one run (under 8 minutes on one H200).
#
#   bash benchmarks/gpu.sh [--dry-run] [OUT_DIR]      (OUT_DIR: default $OUT, else benchmarks/results/gpu-DATE)
#
# Writes OUT_DIR/gpu.jsonl (one JSON object per measurement) and OUT_DIR/gpu.log. Needs nothing from the
# internet: rlmask's dependencies must already be importable (a GPU torch build; wheels of anything
# missing travel with the working tree, see the README). --dry-run does everything up to the first CUDA
# call (imports, command lines, test collection), so CI catches a broken script on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
DEST="${1:-${OUT:-benchmarks/results/gpu-$(date +%F)}}"
mkdir -p "$DEST"
# The Python that imports rlmask: $PYTHON, else the project's .venv (the README's set-up), else python3.
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if ! "$PY" -c 'import rlmask, torch' 2>/dev/null; then
  echo "gpu.sh: $PY cannot import rlmask and torch; set PYTHON to an interpreter that can (see the README)" >&2
  exit 2
fi
JSONL="$DEST/gpu.jsonl"
LOG="$DEST/gpu.log"
: > "$JSONL"
: > "$LOG"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
run() {  # run a command (or, in a dry run, only show it)
  say "+ $*"
  if [ "$DRY" = 1 ]; then return 0; fi
  "$@" 2>&1 | tee -a "$LOG"
}
bench() {  # one `rlmask bench` line appended to gpu.jsonl
  say "+ rlmask bench $*"
  if [ "$DRY" = 1 ]; then
    "$PY" -m rlmask bench "$@" --help > /dev/null  # the flags parse for this method
    return 0
  fi
  "$PY" -m rlmask bench "$@" --json | "$PY" -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >> "$JSONL"
}

say "rlmask GPU check, dry run: $DRY, results in $DEST"
"$PY" - <<'PY' | tee -a "$LOG"
import json, torch, rlmask
from rlmask.agents import AGENTS
print(json.dumps({"torch": torch.__version__, "rlmask": rlmask.__version__, "cuda_built": torch.version.cuda,
                  "agents": list(AGENTS)}))
PY
"$PY" -m pytest -q -m cuda --collect-only tests/cuda > /dev/null  # the CUDA tests import and are found
if [ "$DRY" = 0 ]; then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: nothing to check")'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
fi

# 1. the CUDA-marked tests (sampler statistics, a step of every agent, resume, SyncBatchNorm under nccl, compile)
run "$PY" -m pytest -q -m cuda tests/cuda -p no:cacheprovider

# 2. step-time ratios at the reference scale: PGNM with a full and a half-resolution policy, compile on and off
for compile in --compile --no-compile; do
  bench --method pgnm --model resnet50 --image-size 224 --batch-size 128 --amp $compile --rounds 6 --steps 5 --pipeline-batches 0
  bench --method pgnm --model resnet50 --image-size 224 --batch-size 128 --amp $compile --rounds 6 --steps 5 \
    --policy-input-size 112 --pipeline-batches 0
done
# every other registered method at its defaults
for method in $("$PY" -c 'from rlmask.agents import AGENTS; print(" ".join(m for m, s in AGENTS.items() if m not in ("plain", "pgnm") and not s.presets))'); do
  bench --method "$method" --model resnet50 --image-size 224 --batch-size 128 --amp --rounds 4 --steps 5 --pipeline-batches 0
done

# 3. one short real training for end-to-end images/s and peak memory, and the data pipeline's rate
DATA="../shared/data/organamnist.npz ../shared/data/bloodmnist.npz ../shared/data/pneumoniamnist.npz ../shared/data/breastmnist.npz ../shared/data/retinamnist.npz ../shared/data/mednist64.npz"
[ -d ../shared/data ] || DATA="synthetic:n=512,size=64"
bench --method plain --model resnet18 --image-size 64 --batch-size 256 --data $DATA --pipeline-batches 50 --rounds 2
say "+ rlmask pretrain (1 epoch of the pool at 64 px)"
if [ "$DRY" = 0 ]; then
  start=$(date +%s.%N)
  "$PY" -m rlmask pretrain --method pgnm --data $DATA --image-size 64 --model resnet18 --batch-size 256 --epochs 1 \
    --train-per-class 1000 --eval-per-class 200 --num-workers 8 --no-progress --out "$DEST/pretrain-run" 2>&1 | tee -a "$LOG"
  end=$(date +%s.%N)
  "$PY" - "$DEST/pretrain-run" "$start" "$end" >> "$JSONL" <<'PY'
import json, sys
folder, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
log = [json.loads(line) for line in open(f"{folder}/log.jsonl")]
cfg = json.load(open(f"{folder}/config.json"))
images = cfg["steps_per_epoch"] * cfg["batch_size"]
print(json.dumps({"run": "pretrain pgnm 1 epoch", "images": images, "train_seconds": log[0]["train_seconds"],
                  "train_img_s": round(images / log[0]["train_seconds"], 1), "wall_seconds": round(end - start, 1)}))
PY
else
  "$PY" -m rlmask pretrain --help > /dev/null
fi
say "done: $JSONL"
