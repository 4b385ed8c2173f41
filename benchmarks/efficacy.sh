#!/usr/bin/env bash
# The efficacy study: does a masking method beat plain training on the six-file pool of ../shared/data,
# in-domain and on an unseen source, and does the gap change with the budget? CPU-hours; never in CI.
#
#   bash benchmarks/efficacy.sh [short|long|leave-out|all] [OUT]     (default: all, runs/efficacy)
#   bash benchmarks/efficacy.sh regime [OUT [--sources pair pool] [--sizes 10 25 50 100] [--passes 1 2 3]]
#
# `regime` (issue 24; CPU-days, so not part of `all`) is benchmarks/efficacy_regime.py: at 10, 25, 50 and 100
# images per class on the six-file pool and on BreastMNIST + PneumoniaMNIST, a plain pilot finds the epoch
# where plain training peaks, then one comparison per regime at that budget runs the agents, the baselines a
# user would pick instead, each agent on top of the strongest baseline and each agent annealed. Its table and
# figure go to benchmarks/results/efficacy/regime/ (regime.md, regime.png). Run two at once on one OUT (one
# per core, OMP_NUM_THREADS=1) to share the work.
#
# Every part is one `rlmask compare`: run it again and it skips finished sub-runs and resumes an
# interrupted one, so the study can be stopped and continued across sessions. The parts share nothing and
# may run side by side (one per core: OMP_NUM_THREADS=1). Each part's comparison.json, comparison.md,
# differences.png and curves.png are copied to benchmarks/results/efficacy/PART/ when it completes, and its
# wall time appended to wall.txt there.
#
# On a fresh machine, resume from the finished runs kept in the repository (their small files, no
# checkpoints; see benchmarks/keep_runs.py), with the default OUT:
#   mkdir -p runs && cp -r benchmarks/results/efficacy/runs/. runs/efficacy/ && bash benchmarks/efficacy.sh
# and keep what a session finished:
#   python benchmarks/keep_runs.py runs/efficacy benchmarks/results/efficacy/runs --as runs/efficacy
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
OUT=${2:-runs/efficacy}
RLMASK=${RLMASK:-rlmask}
PYTHON=${PYTHON:-python3}  # one that imports rlmask (the budget comparison)
D=../shared/data
POOL=($D/organamnist.npz $D/bloodmnist.npz $D/pneumoniamnist.npz $D/breastmnist.npz $D/retinamnist.npz $D/mednist64.npz)
COMMON=(--data "${POOL[@]}" --image-size 28 --model resnet10t --train-per-class 100 --eval-per-class 100
        --seeds 3 --no-progress --val-every 4)
# --val-every 4 (from 2026-12-04; the runs before validated every epoch): validation was ~45% of an epoch's
# wall time here, and it changes nothing of training or of the final model's scores (tested for every agent).
# Issue 17's "before": the reinforce objective with its defaults of before that issue.
BEFORE=(--method-option pgnm-before17:log_prob_reduction=sum --method-option pgnm-before17:advantage_norm=false
        --method-option pgnm-before17:base_mix=0.9 --method-option pgnm-before17:policy_optimizer=sgd
        --method-option pgnm-before17:policy_lr=0.01 --method-option pgnm-before17:policy_schedule=cosine)
# The fast configuration: the policy sees the image at half its side.
HALF=(--method-option pgnm-half:policy_input_size=14)

run() {  # run PART-NAME ARGS...: one comparison, then its tables and figure into benchmarks/results
  local name=$1; shift
  local start=$SECONDS
  "$RLMASK" compare "$@" --out "$OUT/$name"
  mkdir -p "benchmarks/results/efficacy/$name"
  # appended to the kept wall.txt too: it is the part's history across sessions (a fresh clone's OUT has none)
  echo "efficacy $name: $(( SECONDS - start )) s in this invocation" |
    tee -a "$OUT/$name/wall.txt" "benchmarks/results/efficacy/$name/wall.txt"
  cp "$OUT/$name"/comparison.{json,md} "benchmarks/results/efficacy/$name/"
  for figure in differences curves; do
    if [ -f "$OUT/$name/$figure.png" ]; then cp "$OUT/$name/$figure.png" "benchmarks/results/efficacy/$name/"; fi
  done
}

if [[ $PART == short || $PART == all ]]; then  # 4 + 1 epochs: every method
  # In three passes over the same folder (each reuses the sub-runs before it): compare goes seed by seed, so
  # each pass gets its methods on every seed before the next, slower, pass starts. First PGNM before and
  # after issue 17 and random-mask; then the rest of the PGNM variants and gaussian-noise; then the agents
  # added later (APGA, Intelligent Masking), the slowest per epoch.
  methods=plain,pgnm-reinforce,pgnm-before17=pgnm-reinforce,random-mask
  run short "${COMMON[@]}" --epochs 4 --finetune-epochs 1 "${BEFORE[@]}" --methods $methods
  methods+=,pgnm-reference,gaussian-noise,pgnm-half=pgnm-reinforce
  run short "${COMMON[@]}" --epochs 4 --finetune-epochs 1 "${BEFORE[@]}" "${HALF[@]}" --methods $methods
  methods+=,apga,context-dqn,context-random
  run short "${COMMON[@]}" --epochs 4 --finetune-epochs 1 "${BEFORE[@]}" "${HALF[@]}" --methods $methods
fi
if [[ $PART == long || $PART == all ]]; then  # 12 + 3 epochs: does the gap shrink, vanish or reverse?
  run long "${COMMON[@]}" --epochs 12 --finetune-epochs 3 --methods plain,pgnm-reinforce,random-mask
fi
if [[ $PART == leave-out || $PART == all ]]; then  # pretrain on five sources, transfer to the sixth
  run leave-out "${COMMON[@]}" --epochs 4 --finetune-epochs 1 --leave-out breastmnist.npz --shots 16,64,256 \
    --transfer-mode linear --methods plain,pgnm-reinforce,random-mask,apga,context-dqn,context-random
fi
if [[ $PART == regime ]]; then
  "$PYTHON" benchmarks/efficacy_regime.py run "$OUT/regime" "${@:3}"
  "$PYTHON" benchmarks/efficacy_regime.py table "$OUT/regime" benchmarks/results/efficacy/regime
  exit 0
fi
# The budget question, once both budgets have a comparison: method - plain at 4+1 and 12+3 epochs side by side.
R=benchmarks/results/efficacy
if [[ -f $R/short/comparison.json && -f $R/long/comparison.json ]]; then
  "$PYTHON" benchmarks/efficacy_budget.py $R/short $R/long --figure $R/budget.png | tee $R/budget.md
fi
