#!/usr/bin/env bash
# CPU dry run of scripts/device_session.sh with the tiny UNet and a handful of images:
# checks that every phase, the packing and scripts/device_unpack.sh work before a GPU call.
#
#   bash scripts/device_dry_run.sh [DATA_DIR]     (a folder with train.zip and val.zip;
#                                                  default ../shared/data/celeba64)
# Leaves its outputs in a temporary folder it prints (the unpacked results under it).
set -euo pipefail
cd "$(dirname "$0")/.."
data="$(cd "${1:-../shared/data/celeba64}" && pwd)"
tmp="$(mktemp -d)"
mkdir -p "$tmp/out"
OUT="$tmp/out" DATA="$data" PYTHON="${PYTHON:-.venv/bin/python}" SKIP_WHEELS=1 DEVICE=cpu CONFIG=tiny WEIGHTS= \
  TRAIN_BATCH=8 PROBE_STEPS=2 MAX_STEPS=4 TRAIN_EXTRA="--workers 1" DENOISE_N=8 QUALITY_N=8 QUALITY_STEPS=3 \
  QUALITY_BATCH=8 LIMIT=3 BENCH_BATCH=3 BENCH_EXTRA="--steps 4 --langevin-steps 1" TIMING_BATCHES=1 \
  TIMING_EXTRA="--grids ddim:4 --sdedit-steps 4" AFTER_SECONDS=120 TOTAL_SECONDS="${TOTAL_SECONDS:-400}" \
  bash scripts/device_session.sh
bash scripts/device_unpack.sh "$tmp/out" "$tmp/unpacked"
echo "dry run outputs: $tmp"
