#!/usr/bin/env bash
# Issue 25's long run, to start in a session's first minutes (docs/model.md):
# RUN has a checkpoint -> continue it (every setting from its train_config.json, the global batch
# kept whatever the number of processes); otherwise warm-start from the shipped prior
# (src/odedit/weights/celeba64: its ppca-edm base and head are kept) with the long run's settings
# (global batch 32, EMA power 2/3) at lr LR (default 1e-4: the shipped prior is session 17's GPU
# export, which ends a linear cool-down at batch 512; the CPU runs before it used 1e-3 from a
# constant-rate export. 1e-4 is a guess from the scale of the updates, not measured).
# PROCS processes (default: one per core), one torch thread each, under torchrun when PROCS > 1;
# stops (checkpoint + fp16 EMA export) after MINUTES.
# Usage: nohup bash scripts/long_run.sh MINUTES [RUN] > LOG 2>&1 &
#   RUN default ~/.cache/odedit/runs/s17 (the run from the GPU prior; runs/s12 was the CPU lineage
#   before it); PROCS; LR; DATA (../shared/data/celeba64/train.zip); WEIGHTS (the warm start,
#   default the shipped prior); extra `odedit train` flags after RUN.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:?usage: long_run.sh MINUTES [RUN] [flags...]}"
run="${2:-$HOME/.cache/odedit/runs/s17}"
shift $(( $# >= 2 ? 2 : 1 ))
procs="${PROCS:-$(nproc)}"
data="${DATA:-../shared/data/celeba64/train.zip}"
weights="${WEIGHTS:-src/odedit/weights/celeba64}"
export OMP_NUM_THREADS=1
if [ "$procs" -gt 1 ]; then
  launch=(.venv/bin/torchrun --standalone --nproc_per_node "$procs" .venv/bin/odedit)
else
  launch=(.venv/bin/odedit)
fi
if compgen -G "$run/checkpoints/step_*" >/dev/null; then
  echo "long_run: continuing $run with $procs process(es) for $minutes min"
  exec "${launch[@]}" train --out "$run" --resume --minutes "$minutes" "$@"
fi
if (( 32 % procs )); then
  echo "long_run: the global batch of 32 does not split over $procs processes (set PROCS)" >&2
  exit 2
fi
echo "long_run: no checkpoint in $run: warm start from $weights with $procs process(es) for $minutes min"
exec "${launch[@]}" train --data "$data" --out "$run" --resume-from-weights "$weights" --cpu \
  --batch-size $(( 32 / procs )) --lr "${LR:-1e-4}" --warmup-steps 50 --ema-power 0.6667 --seed 0 --workers 1 \
  --minutes "$minutes" --checkpoint-minutes 10 --checkpoint-every 0 --sample-every 0 \
  --export-fp16 --export-raw "$@"
