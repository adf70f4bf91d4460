#!/usr/bin/env bash
# Unpack what `bash scripts/device_session.sh` returned from the GPU machine.
#
#   bash scripts/device_unpack.sh FILES_AT [DEST]      (DEST default runs/device)
#
# DEST/session.log
# DEST/scores/{denoising.json,quality_new/,quality_base/,timing_*.md}   scores and restore timing
# DEST/bench_new/, DEST/bench_base/   {summary.md,results.csv,bench.json,images/}: ODEdit's default
#                                     and SDEdit with the new and the starting prior
# DEST/model, DEST/log.jsonl, DEST/train_config.json   the trained prior (from prior.tar.part-*)
# Each part is unpacked on its own: a missing or truncated one is reported and the others are
# still unpacked; the exit status is 1 if anything could not be unpacked.
# Then: python scripts/ship_default_model.py DEST/model   (installs it as the embedded prior)
set -uo pipefail
src="${1:?usage: device_unpack.sh FILES_AT [DEST]}"
dest="${2:-runs/device}"
mkdir -p "$dest"
status=0
problem() {
  echo "device_unpack: $*" >&2
  status=1
}

if [ -f "$src/session.log" ]; then
  cp -f --no-preserve=mode "$src/session.log" "$dest/session.log" || problem "could not copy session.log"
else
  problem "no session.log in $src"
fi
for name in scores bench_new bench_base; do
  if [ -f "$src/$name.tar.gz" ]; then
    rm -rf "${dest:?}/$name"
    mkdir -p "$dest/$name"
    if tar -xzf "$src/$name.tar.gz" -C "$dest/$name"; then
      echo "$name -> $dest/$name"
    else
      problem "$name.tar.gz is damaged"
    fi
  else
    problem "no $name.tar.gz in $src (that phase did not finish)"
  fi
done
if compgen -G "$src/prior.tar.part-*" >/dev/null; then
  rm -rf "${dest:?}/model"
  # parts are named -00, -01, ... so the glob's order is the archive's order
  if cat "$src"/prior.tar.part-* | tar -xf - -C "$dest" && [ -d "$dest/model/unet" ]; then
    echo "prior -> $dest/model"
  else
    problem "the prior archive (prior.tar.part-*) is incomplete or damaged"
  fi
else
  problem "no prior.tar.part-* in $src"
fi
for which in new base; do
  if [ -f "$dest/scores/quality_$which/quality.json" ]; then
    python3 - "$dest/scores/quality_$which/quality.json" "$which" <<'PY'
import json, sys
q = json.load(open(sys.argv[1]))
floor = q.get("swd_train_val", {}).get("mean")
print(f"{sys.argv[2]}: SWD x1e3 samples-val {q['swd_samples_val']['mean']:.2f}",
      "" if floor is None else f"train-val (floor) {floor:.2f}")
PY
  fi
done
exit "$status"
