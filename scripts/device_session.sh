#!/usr/bin/env bash
# One call of the GPU machine: train the default face prior, measure it, run the publish benchmark.
#
# Prepared here with `bash scripts/device_prepare.sh`, then run there with
#   device run  carry ["device_data", ".whl"]  timeout_s 600  command "bash scripts/device_session.sh"
# Everything is time-boxed inside one deadline (TOTAL_SECONDS after start, default 540 s) so
# the call ends by itself, and every phase leaves its result under $OUT as soon as it is done,
# so a call cut off later still returns what was finished:
#
#   $OUT/session.log          everything printed, with phase timings
#   $OUT/prior.tar.part-NN    the EMA model (fp16 safetensors, save_pretrained layout) +
#                             log.jsonl + train_config.json, tar split into PART_SIZE parts
#                             (each file that comes back is limited to 16 MiB)
#   $OUT/quality.tar.gz       scripts/prior_quality.py: samples.png + quality.json (SWD of
#                             QUALITY_N samples vs val, and train vs val as the floor)
#   $OUT/bench.tar.gz         odedit bench: summary.md, results.csv, grid.png, bench.json
#                             (re-packed after each finished stage: stage 1 = source,
#                             odedit-medium, sdedit-0.5; 2 = + presets light/heavy, strengths
#                             0.3/0.7; 3 = + --ablations). A stage cut off by the deadline
#                             leaves the previous stage's tables; how far the stages get
#                             depends on the GPU's speed (celeba64: ~12 GFLOP per forward
#                             pass; stage 1 is ~0.2 M passes, 2 ~0.4 M more, 3 ~1.3 M more).
# Back here: bash scripts/device_unpack.sh FILES_AT  (reassembles under runs/device/).
#
# Settings (environment): TRAIN_MINUTES (5), TRAIN_BATCH (256), CHECKPOINT_MINUTES (2),
# TRAIN_LR (2e-4: EDM's rate at batch 256; odedit train's default 1e-3 was measured at batch 32),
# TRAIN_EXTRA (extra train flags), CONFIG (celeba64), DEVICE (cuda), MIXED_PRECISION (bf16),
# QUALITY_N (2000), QUALITY_STEPS (100), QUALITY_BATCH (500), LIMIT (500), BENCH_BATCH (250),
# BENCH_DTYPE (float32; cuDNN still uses TF32 convolutions, PyTorch's default), BENCH_EXTRA
# (extra bench flags), TOTAL_SECONDS (540), PART_SIZE (15M), PYTHON (python3), DATA
# (device_data), SKIP_WHEELS (set: use the installed packages, e.g. for a CPU dry run).
# Exit status: 0 when every phase finished or was cut off by the deadline as planned, 1 when
# a phase failed (the log says which). After the call, give the machine back at once.
# A CPU dry run of the whole script with the tiny model: scripts/device_dry_run.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder whose files come back}"
PY="${PYTHON:-python3}"
DATA="${DATA:-device_data}"
CONFIG="${CONFIG:-celeba64}"
DEVICE="${DEVICE:-cuda}"
TOTAL_SECONDS="${TOTAL_SECONDS:-540}"
read -ra TRAIN_EXTRA_ARGS <<<"${TRAIN_EXTRA:-}"
read -ra BENCH_EXTRA_ARGS <<<"${BENCH_EXTRA:-}"
start=$(date +%s)
deadline=$((start + TOTAL_SECONDS))
exec > >(tee -a "$OUT/session.log") 2>&1
tee_pid=$!
export PYTHONUNBUFFERED=1
failed=()

say() { echo "[$(($(date +%s) - start))s] $*"; }
left() { echo $((deadline - $(date +%s))); }
finish() { # finish STATUS: say what failed, flush the log (wait for tee), exit
  say "done: ${#failed[@]} failed phase(s) ${failed[*]:-}; $(left) s of the deadline left"
  ls -la "$OUT"
  exec >&- 2>&-
  wait "$tee_pid" 2>/dev/null
  exit "$1"
}
# run_boxed SECONDS_RESERVED_AFTER CMD...: run CMD with what is left of the deadline minus the
# reserve; SIGTERM first (odedit train then checkpoints and exports; unlike SIGINT, a second
# one never aborts), SIGKILL 20 s later. Returns 124/137 when the deadline cut it off, 125 when
# there was no time left to start it.
run_boxed() {
  local reserve=$1
  shift
  local budget=$(($(left) - reserve))
  if [ "$budget" -lt 10 ]; then
    say "skipped (only $(left) s left): $*"
    return 125
  fi
  timeout --signal=TERM --kill-after=20 "$budget" "$@"
}
check() { # check NAME RC: log the outcome; a failure (not a planned cut-off) is remembered
  case "$2" in
    0) say "$1: ok" ;;
    124 | 125 | 137) say "$1: cut off by the deadline (exit $2)" ;;
    *)
      say "$1: FAILED (exit $2)"
      failed+=("$1")
      ;;
  esac
}
pack() { # pack TARGET DIR FILES...: tar.gz of the files that exist, written atomically
  local target=$1 dir=$2
  shift 2
  local files=()
  for f in "$@"; do [ -e "$dir/$f" ] && files+=("$f"); done
  [ ${#files[@]} -gt 0 ] || return 0
  tar -czf "$target.tmp" -C "$dir" "${files[@]}" && mv "$target.tmp" "$target"
}

# 0. Packages: wheels carried in .whl (diffusers and what it needs beyond the machine's image).
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl; then
    failed+=(wheels)
    finish 1
  fi
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
if ! DEVICE="$DEVICE" "$PY" -c '
import os, torch, diffusers, accelerate, odedit
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "| diffusers", diffusers.__version__, "| accelerate", accelerate.__version__)
if os.environ["DEVICE"] != "cpu" and not torch.cuda.is_available():
    raise SystemExit("DEVICE=%s but torch sees no CUDA device: stopping rather than training on the CPU"
                     % os.environ["DEVICE"])
'; then
  failed+=(preflight)
  finish 1
fi
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# 1. Train (bf16, EMA; checkpoint + export every CHECKPOINT_MINUTES so a cut-off still has weights).
RUN=runs/device-prior
rm -rf "$RUN"
say "phase 1: train $CONFIG for ${TRAIN_MINUTES:-5} min"
run_boxed 150 "$PY" -m odedit.cli train --data "$DATA/train.zip" --out "$RUN" --config "$CONFIG" \
  --mixed-precision "${MIXED_PRECISION:-bf16}" --batch-size "${TRAIN_BATCH:-256}" --lr "${TRAIN_LR:-2e-4}" \
  --minutes "${TRAIN_MINUTES:-5}" --checkpoint-minutes "${CHECKPOINT_MINUTES:-2}" \
  --workers 16 --export-fp16 --sample-every 0 --quiet "${TRAIN_EXTRA_ARGS[@]}"
check train $?
if [ ! -d "$RUN/model/unet" ]; then
  say "no model exported"
  failed+=(no-model)
  finish 1
fi
rm -f "$OUT"/prior.tar.part-*
tar -cf - -C "$RUN" model log.jsonl train_config.json | split -b "${PART_SIZE:-15M}" -d - "$OUT/prior.tar.part-"
check pack-prior $?
tail -n 3 "$RUN/log.jsonl"
say "prior packed: $(ls "$OUT" | grep -c prior.tar.part) part(s)"

# 2. Sample quality: grid + SWD of samples vs val, train vs val (floor).
say "phase 2: prior quality (${QUALITY_N:-2000} samples)"
run_boxed 90 "$PY" scripts/prior_quality.py --model "$RUN/model" --val "$DATA/val.zip" --train "$DATA/train.zip" \
  -n "${QUALITY_N:-2000}" --steps "${QUALITY_STEPS:-100}" --device "$DEVICE" --batch-size "${QUALITY_BATCH:-500}" \
  -o "$RUN/quality"
check quality $?
pack "$OUT/quality.tar.gz" "$RUN/quality" samples.png quality.json

# 3. The publish benchmark, in stages that each end with a full set of tables.
BENCH="$RUN/bench"
common=(--data "$DATA/val.zip" --model "$RUN/model" -o "$BENCH" --limit "${LIMIT:-500}" --severity 4 --seed 0
  --device "$DEVICE" --dtype "${BENCH_DTYPE:-float32}" --batch-size "${BENCH_BATCH:-250}" --quiet
  "${BENCH_EXTRA_ARGS[@]}")
stages=(
  "--methods source,odedit,sdedit --presets medium --strengths 0.5"
  "--methods source,odedit,sdedit --presets medium,light,heavy --strengths 0.3,0.5,0.7"
  "--methods source,odedit,sdedit --presets medium,light,heavy --strengths 0.3,0.5,0.7 --ablations"
)
for i in "${!stages[@]}"; do
  say "phase 3.$((i + 1)): bench ${stages[$i]}"
  read -ra stage_args <<<"${stages[$i]}"
  run_boxed 15 "$PY" -m odedit.cli bench "${common[@]}" "${stage_args[@]}"
  rc=$?
  check "bench-stage-$((i + 1))" $rc
  [ $rc -eq 0 ] || break # a stage rewrites bench.json when it starts: pack finished stages only
  pack "$OUT/bench.tar.gz" "$BENCH" summary.md results.csv grid.png bench.json
done
[ ${#failed[@]} -eq 0 ] && finish 0
finish 1
