#!/usr/bin/env bash
# Score one trained prior for the recipe table of docs/training.md (issue 25), on the CPU:
#   1. x0-MSE ratio per level, first 256 val faces (seed 0)       -> OUT/denoising.json
#   2. SWD of 256 samples (DPM-Solver++(2M), 20 steps, seeds 0..255) vs 256 val faces,
#      and the train-vs-val floor; 64-sample grid                -> OUT/quality/
#   3. ODEdit preset PRESET (default: fast, restore's default since session 18; the recipe
#      table's rows before it used light, DDIM 100) on the first 100 val faces, severity 4,
#      seed 0, paired against the degraded source                 -> OUT/bench/
# Usage: bash scripts/score_recipe.sh MODEL_DIR OUT_DIR   (DTYPE=bfloat16|float32, default bfloat16
# where the CPU has bf16 hardware; BENCH_N=100, 0 skips step 3; DATA=../shared/data/celeba64)
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:?usage: score_recipe.sh MODEL_DIR OUT_DIR}"
out="${2:?usage: score_recipe.sh MODEL_DIR OUT_DIR}"
data="${DATA:-../shared/data/celeba64}"
dtype="${DTYPE:-$(.venv/bin/python -c 'from odedit.devices import cpu_has_fast_bf16 as f; print("bfloat16" if f() else "float32")')}"
py=.venv/bin/python
mkdir -p "$out"
echo "== 1. denoising per level ($dtype)"
$py scripts/prior_denoising.py --model "$model" --val "$data/val.zip" -n 256 --dtype "$dtype" -o "$out/denoising.json"
echo "== 2. sample quality"
$py scripts/prior_quality.py --model "$model" --val "$data/val.zip" --train "$data/train.zip" \
  -n 256 --steps 20 --solver dpm++2m --batch-size 64 --dtype "$dtype" -o "$out/quality"
if [ "${BENCH_N:-100}" != 0 ]; then
  echo "== 3. ODEdit ${PRESET:-fast} on ${BENCH_N:-100} val faces"
  .venv/bin/odedit bench --data "$data/val.zip" --model "$model" -o "$out/bench" --limit "${BENCH_N:-100}" \
    --severity 4 --seed 0 --methods source,odedit --presets "${PRESET:-fast}" --device cpu --dtype "$dtype" --quiet
fi
echo "score_recipe: done -> $out"
