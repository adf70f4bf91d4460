#!/usr/bin/env bash
# One call of the GPU machine (issue 29): continue training the embedded face prior (its Gaussian
# base and the long run's recipe) at a large batch in bf16, score it against the prior it started
# from, time restore, and run ODEdit's default on the val faces with both priors.
#
# Prepared here with `bash scripts/device_prepare.sh`, then run there with
#   device run  carry ["device_data", ".whl"]  timeout_s 600  command "bash scripts/device_session.sh"
# Everything is time-boxed inside one deadline (TOTAL_SECONDS after start, default 560 s) so the
# call ends by itself, and every phase leaves its result under $OUT as soon as it is done, so a
# call cut off later still returns what was finished (at most 8 files of 16 MiB come back):
#
#   $OUT/session.log          everything printed, with phase timings
#   $OUT/prior.tar.part-NN    the trained EMA model (fp16, save_pretrained layout, its Gaussian
#                             base) + log.jsonl + train_config.json, a tar split into PART_SIZE parts
#   $OUT/scores.tar.gz        denoising.json (x0-MSE ratio per level, both priors, first DENOISE_N
#                             val faces), quality_new/ and quality_base/ (prior_quality.py: SWD of
#                             QUALITY_N samples, DPM-Solver++(2M) QUALITY_STEPS steps, vs val, the
#                             train-vs-val floor, samples.png), timing_float32.md and
#                             timing_bfloat16.md (benchmarks/bench_restore.py)
#   $OUT/bench_new.tar.gz     odedit bench of source, ODEdit fast (the default), light and SDEdit 0.5 on
#   $OUT/bench_base.tar.gz    LIMIT val faces (severity 4, seed 0) with the new and the starting
#                             prior: summary.md, results.csv, bench.json, and the images and
#                             per-image records benchmarks/aligned_gate_score.py needs (clean,
#                             degraded, odedit-*)
# Back here: bash scripts/device_unpack.sh FILES_AT  (reassembles under runs/device/).
#
# Training is two processes: a probe of PROBE_STEPS steps (warm start from WEIGHTS, warm-up
# WARMUP steps) measures the step rate, then the run is resumed with --steps N chosen to end
# where the time box does, the learning rate decaying linearly to 0 over the last
# DECAY_PERCENT % of the N steps (a cool-down: the EMA of a short constant-rate run is noisier).
#
# Settings (environment): WEIGHTS (warm start, default the embedded prior; empty = a new network
# of CONFIG), BASELINE (the prior compared against, default the embedded one; empty = none),
# TRAIN_BATCH (512), TRAIN_LR (1e-3: the long run's rate), WARMUP (100), PROBE_STEPS (60),
# DECAY_PERCENT (35), MAX_STEPS (cap on N; unset = none), FILL_PERCENT (97: the share of the
# box's remaining seconds N is planned for), CHECKPOINT_MINUTES (2), TRAIN_EXTRA
# (extra train flags), AFTER_SECONDS (200: kept for the phases after training; they took ~190 s on an H200), CONFIG
# (celeba64, for a new network), DEVICE (cuda), MIXED_PRECISION (bf16), DENOISE_N (256),
# QUALITY_N (256), QUALITY_STEPS (20), QUALITY_BATCH (256), TIMING_BATCHES (1,16,64,256),
# TIMING_EXTRA, LIMIT (300), BENCH_BATCH (300), BENCH_DTYPE (float32), BENCH_EXTRA,
# TOTAL_SECONDS (560), PART_SIZE (15M), PYTHON (python3), DATA (device_data), SKIP_WHEELS (set:
# use the installed packages, e.g. for a CPU dry run).
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
WEIGHTS="${WEIGHTS-src/odedit/weights/celeba64}"
BASELINE="${BASELINE-src/odedit/weights/celeba64}"
BATCH="${TRAIN_BATCH:-512}"
PROBE_STEPS="${PROBE_STEPS:-60}"
TOTAL_SECONDS="${TOTAL_SECONDS:-560}"
read -ra TRAIN_EXTRA_ARGS <<<"${TRAIN_EXTRA:-}"
read -ra BENCH_EXTRA_ARGS <<<"${BENCH_EXTRA:-}"
read -ra TIMING_EXTRA_ARGS <<<"${TIMING_EXTRA:-}"
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
pack() { # pack TARGET DIR PATHS...: tar.gz of the paths that exist, written atomically
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
# The training faces travel packed (scripts/device_data.py: one shared JPEG header): rebuild the zip.
if [ ! -f "$DATA/train.zip" ] && [ -f "$DATA/train.jpgs" ]; then
  if ! "$PY" scripts/device_data.py unpack "$DATA/train.jpgs" "$DATA/train.zip"; then
    failed+=(data)
    finish 1
  fi
fi
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# 1. Train: the probe (warm start, warm-up, step rate), then the resumed run with its cool-down.
RUN=runs/device-prior
rm -rf "$RUN"
common=(--out "$RUN" --mixed-precision "${MIXED_PRECISION:-bf16}" --workers 16 --export-fp16 --sample-every 0
  --checkpoint-every 0 --quiet "${TRAIN_EXTRA_ARGS[@]}")
if [ -n "$WEIGHTS" ]; then start_from=(--resume-from-weights "$WEIGHTS"); else start_from=(--config "$CONFIG"); fi
say "phase 1a: probe, $PROBE_STEPS steps at batch $BATCH from ${WEIGHTS:-a new $CONFIG network}"
run_boxed "${AFTER_SECONDS:-200}" "$PY" -m odedit.cli train --data "$DATA/train.zip" "${start_from[@]}" \
  --batch-size "$BATCH" --lr "${TRAIN_LR:-1e-3}" --warmup-steps "${WARMUP:-100}" --ema-power 0.6667 --seed 0 \
  --steps "$PROBE_STEPS" --checkpoint-minutes 0 "${common[@]}"
check train-probe $?
# steps the rest of the box holds at the probe's rate (its later log records: past cuDNN's autotuning)
steps=$("$PY" - "$RUN/log.jsonl" "$PROBE_STEPS" "$BATCH" $(($(left) - ${AFTER_SECONDS:-200} - 30)) "${MAX_STEPS:-0}" \
  "${FILL_PERCENT:-97}" <<'PY'
import json, sys
recs = [json.loads(line) for line in open(sys.argv[1])]
probe, batch, seconds, cap = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rates = [r["images_per_s"] for r in recs[len(recs) // 2:]]
n = probe + int(float(sys.argv[6]) / 100 * max(0.0, seconds) * sum(rates) / len(rates) / batch)
print(min(n, cap) if cap > 0 else n)
PY
)
if [ -n "$steps" ] && [ "$steps" -gt "$PROBE_STEPS" ]; then
  decay=$(( (steps * ${DECAY_PERCENT:-35}) / 100 ))
  [ "$decay" -ge 1 ] || decay=1
  minutes=$("$PY" -c "print(max(0.1, ($(left) - ${AFTER_SECONDS:-200} - 10) / 60))")
  say "phase 1b: resume to step $steps (linear decay over the last $decay), at most $minutes min"
  run_boxed "${AFTER_SECONDS:-200}" "$PY" -m odedit.cli train --resume --steps "$steps" --lr-schedule linear \
    --decay-steps "$decay" --minutes "$minutes" --checkpoint-minutes "${CHECKPOINT_MINUTES:-2}" "${common[@]}"
  check train $?
else
  say "phase 1b: skipped (probe gave no step rate or no time is left: steps '${steps}')"
  failed+=(train-steps)
fi
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

# 2. Scores: denoising per level and sample quality, the new prior and the one it started from.
SC="$RUN/scores"
mkdir -p "$SC"
models=(--model "$RUN/model")
[ -z "$BASELINE" ] || models+=(--model "$BASELINE")
say "phase 2: scores (denoising, ${QUALITY_N:-256} samples)"
run_boxed 120 "$PY" scripts/prior_denoising.py "${models[@]}" --val "$DATA/val.zip" -n "${DENOISE_N:-256}" \
  --device "$DEVICE" -o "$SC/denoising.json"
check denoising $?
model_of() { if [ "$1" = base ]; then echo "$BASELINE"; else echo "$RUN/model"; fi; } # new | base -> folder
for which in new base; do
  m=$(model_of "$which")
  [ -n "$m" ] || continue
  run_boxed 110 "$PY" scripts/prior_quality.py --model "$m" --val "$DATA/val.zip" --train "$DATA/train.zip" \
    -n "${QUALITY_N:-256}" --steps "${QUALITY_STEPS:-20}" --solver dpm++2m --batch-size "${QUALITY_BATCH:-256}" \
    --device "$DEVICE" -o "$SC/quality_$which"
  check "quality-$which" $?
done
pack "$OUT/scores.tar.gz" "$SC" denoising.json quality_new quality_base

# 3. ODEdit's default (fast), the paper's light and SDEdit on the val faces, with each prior (images kept
#    for the crop gate).
for which in new base; do
  m=$(model_of "$which")
  [ -n "$m" ] || continue
  B="$RUN/bench_$which"
  say "phase 3 ($which): bench on ${LIMIT:-300} val faces"
  run_boxed 60 "$PY" -m odedit.cli bench --data "$DATA/val.zip" --model "$m" -o "$B" --limit "${LIMIT:-300}" \
    --severity 4 --seed 0 --methods source,odedit,sdedit --presets fast,light --strengths 0.5 --device "$DEVICE" \
    --dtype "${BENCH_DTYPE:-float32}" --batch-size "${BENCH_BATCH:-300}" --quiet "${BENCH_EXTRA_ARGS[@]}"
  rc=$?
  check "bench-$which" $rc
  if [ $rc -eq 0 ]; then
    imgs=()
    for d in "$B"/images/odedit-*; do [ -d "$d" ] && imgs+=("images/$(basename "$d")" "records/$(basename "$d")"); done
    imgs+=(images/clean images/degraded)
    pack "$OUT/bench_$which.tar.gz" "$B" summary.md results.csv bench.json "${imgs[@]}"
  fi
done

# 4. Restore's speed: images per second and the ratio to bare UNet calls (float32, bf16).
for dtype in float32 bfloat16; do
  say "phase 4: restore timing, $dtype"
  run_boxed 5 "$PY" benchmarks/bench_restore.py --model "$RUN/model" --presets light,fast --strength 0.5 \
    --batch-sizes "${TIMING_BATCHES:-1,16,64,256}" --device "$DEVICE" --dtype "$dtype" "${TIMING_EXTRA_ARGS[@]}" \
    >"$SC/timing_$dtype.md"
  rc=$?
  cat "$SC/timing_$dtype.md"
  check "timing-$dtype" $rc
  pack "$OUT/scores.tar.gz" "$SC" denoising.json quality_new quality_base timing_float32.md timing_bfloat16.md
done
[ ${#failed[@]} -eq 0 ] && finish 0
finish 1
