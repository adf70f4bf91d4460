#!/usr/bin/env bash
# One candidate of the equal-budget recipe study (issue 25; docs/training.md "Recipe study"):
# warm-started from the first embedded prior (commit 6adf837, a plain eps cpu64 network, 36 k
# images), seed 0, batch 32, EMA power 2/3, bf16 autocast on the CPU, MINUTES of wall clock from
# start-up (data decoding and any Gaussian fit included), then scored by scripts/score_recipe.sh
# (SCORE=0 skips it; BENCH_N=0 skips its ODEdit part).
# Usage: bash scripts/recipe_run.sh NAME MINUTES [extra odedit train flags...]
#   e.g. bash scripts/recipe_run.sh r3 21 --precondition edm
# RUNS (default ~/.cache/odedit/runs/study) holds the runs, SCORES (~/.cache/odedit/score/study)
# the scores; run each candidate with OMP_NUM_THREADS set as the study says.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: recipe_run.sh NAME MINUTES [flags...]}"
minutes="${2:?usage: recipe_run.sh NAME MINUTES [flags...]}"
shift 2
runs="${RUNS:-$HOME/.cache/odedit/runs/study}"
scores="${SCORES:-$HOME/.cache/odedit/score/study}"
data="${DATA:-../shared/data/celeba64}"
start="${START:-$runs/start-6adf837}"
if [ ! -d "$start" ]; then
  mkdir -p "$start.tmp"
  git archive 6adf837 src/odedit/weights/celeba64 | tar -x -C "$start.tmp"
  mv "$start.tmp/src/odedit/weights/celeba64" "$start" && rm -rf "$start.tmp"
fi
.venv/bin/odedit train --data "$data/train.zip" --out "$runs/$name" --resume-from-weights "$start" --cpu \
  --mixed-precision "${MIXED:-bf16}" --batch-size 32 --lr 3e-4 --warmup-steps 200 --ema-power 0.6667 \
  --seed 0 --workers 1 --minutes "$minutes" --checkpoint-every 0 --checkpoint-minutes 0 --sample-every 0 \
  --export-fp16 --quiet "$@"
if [ "${SCORE:-1}" != 0 ]; then
  BENCH_N="${BENCH_N:-0}" bash scripts/score_recipe.sh "$runs/$name/model" "$scores/$name"
fi
