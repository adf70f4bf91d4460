#!/usr/bin/env bash
# Measure a trained prior for docs/model.md (issue 11, section 4), on the CPU:
#   1. val denoising MSE per level (EMA and raw weights) -> OUT/denoising.json
#   2. SWD of DDIM samples vs val, train-vs-val floor, 64-sample grid -> OUT/quality/
#   3. restoration check: source, ODEdit (paper settings), SDEdit 0.5 -> OUT/bench/ (+ grid.png)
# Usage: bash scripts/prior_report.sh RUN_DIR OUT_DIR
# Sizes (environment): DENOISE_N (256), SAMPLES_N (2000), SAMPLE_STEPS (100), BENCH_N (100),
# DATA (../shared/data/celeba64). Every step is resumable or cheap to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:?usage: prior_report.sh RUN_DIR OUT_DIR}"
out="${2:?usage: prior_report.sh RUN_DIR OUT_DIR}"
data="${DATA:-../shared/data/celeba64}"
py=.venv/bin/python
mkdir -p "$out"
models=(--model "$run/model")
[ -d "$run/model_raw" ] && models+=(--model "$run/model_raw")
echo "== 1. denoising per level"
$py scripts/prior_denoising.py "${models[@]}" --val "$data/val.zip" -n "${DENOISE_N:-256}" -o "$out/denoising.json"
echo "== 2. sample quality"
$py scripts/prior_quality.py --model "$run/model" --val "$data/val.zip" --train "$data/train.zip" \
  -n "${SAMPLES_N:-2000}" --steps "${SAMPLE_STEPS:-100}" --batch-size 64 -o "$out/quality"
echo "== 3. restoration check"
.venv/bin/odedit bench --data "$data/val.zip" --model "$run/model" -o "$out/bench" --limit "${BENCH_N:-100}" \
  --severity 4 --seed 0 --methods source,odedit,sdedit --presets medium --strengths 0.5 --device cpu --quiet
echo "prior_report: done -> $out"
