#!/usr/bin/env bash
# Step time of every learned agent against plain training at the efficacy study's settings (resnet10t, 28 px,
# batch 64, 3 channels: the six-file pool), side by side in one `rlmask bench` each, appended as JSON lines
# with the machine, date and command. Each agent at its defaults, and with the options that trade nothing
# of the algorithm's definition for speed (APGA: --clean-loss step, the reference's L0).
# Usage: bash benchmarks/agents.sh [RESULTS.jsonl]      (RLMASK: the rlmask command, default rlmask)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/agents-$(date +%F).jsonl}
RLMASK=${RLMASK:-rlmask}
mkdir -p "$(dirname "$out")"
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
record() { python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r.update(machine=sys.argv[1], date=sys.argv[2], command=sys.argv[3]); print(json.dumps(r))' "$machine" "$(date +%F)" "$*" >>"$out"; }
STUDY=(--model resnet10t --image-size 28 --batch-size 64 --channels 3 --rounds 10 --steps 3 --pipeline-batches 0)
for args in "--method apga" "--method apga --clean-loss step" "--method context-dqn" "--method context-random" \
            "--method pgnm-reinforce" "--method random-mask"; do
  # shellcheck disable=SC2086
  "$RLMASK" bench $args "${STUDY[@]}" --json | record "rlmask bench $args ${STUDY[*]}"
done
echo "results -> $out"
