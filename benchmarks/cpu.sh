#!/usr/bin/env bash
# CPU benchmarks, appended as JSON lines (one per command) with the command, machine and date:
#  1. the speed-settings study behind rlmask's CPU defaults (bf16 autocast, channels-last, compile,
#     threads), each setting flipped and timed side by side with the defaults;
#  2. the headline PGNM/plain ratios (resnet18, 64 px, batch 64; full-resolution and 32-px policy),
#     five times each in bf16 and float32;
#  3. a grid of plain vs PGNM step time (full-resolution and half-resolution policy) over models and sizes;
#  4. image folders: index time of a large folder and the data pipeline of npz, folder, workers, pack.
# Usage: bash benchmarks/cpu.sh [RESULTS.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/cpu-$(date +%F).jsonl}
mkdir -p "$(dirname "$out")"
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), torch $(python -c 'import torch; print(torch.__version__)')"
record() { python -c 'import json,sys; r=json.loads(sys.stdin.read()); r.update(machine=sys.argv[1], date=sys.argv[2], command=sys.argv[3]); print(json.dumps(r))' "$machine" "$(date +%F)" "$*" >>"$out"; }
bench() { rlmask bench "$@" --json | record "rlmask bench $*"; }

for size in 64 28; do
  bench --method pgnm --model resnet18 --image-size $size --batch-size 64 --pipeline-batches 0 --vary amp channels_last compile threads
done
for repeat in 1 2 3 4 5; do
  for policy in "" "--policy-input-size 32"; do
    for precision in --amp --no-amp; do
      bench --method pgnm --model resnet18 --image-size 64 --batch-size 64 $policy --pipeline-batches 0 $precision
    done
  done
done
for spec in "resnet50 64" "resnet10t 64" "resnet18 32"; do
  set -- $spec
  for policy in "" "--policy-input-size $(( $2 / 2 ))"; do
    bench --method pgnm --model $1 --image-size $2 --batch-size 64 $policy --pipeline-batches 0
  done
done
python benchmarks/folder.py >>"$out"
echo "results -> $out"
