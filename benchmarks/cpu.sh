#!/usr/bin/env bash
# CPU throughput grid: plain vs PGNM step time (full-resolution and half-resolution policy) for
# several models and image sizes, plus the data pipeline for an npz file and an image folder.
# Usage: bash benchmarks/cpu.sh [RESULTS.jsonl]   (appends one JSON object per line)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/cpu-$(date +%F).jsonl}
mkdir -p "$(dirname "$out")"
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), torch $(python -c 'import torch; print(torch.__version__)')"
record() { python -c 'import json,sys; r=json.loads(sys.stdin.read()); r.update(machine=sys.argv[1], date=sys.argv[2], command=sys.argv[3]); print(json.dumps(r))' "$machine" "$(date +%F)" "$*" >>"$out"; }
for spec in "resnet18 64" "resnet50 64" "resnet10t 64" "resnet18 32"; do
  set -- $spec
  half=$(( $2 / 2 ))
  for policy in "" "--policy-input-size $half"; do
    cmd="rlmask bench --method pgnm --model $1 --image-size $2 --batch-size 64 $policy --pipeline-batches 0 --json"
    $cmd | record "$cmd"
  done
done
cmd="rlmask bench --model resnet18 --image-size 28 --batch-size 64 --data ../shared/data/organamnist.npz --rounds 1 --steps 1 --pipeline-batches 200 --json"
$cmd | record "$cmd"
echo "results -> $out"
