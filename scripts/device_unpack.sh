#!/usr/bin/env bash
# Unpack what `bash scripts/device_session.sh` returned from the GPU machine.
#
#   bash scripts/device_unpack.sh FILES_AT [DEST]      (DEST default runs/device)
#
# DEST/model, DEST/log.jsonl, DEST/train_config.json   the trained prior (from prior.tar.part-*)
# DEST/quality/{samples.png,quality.json}               sample grid and SWD figures
# DEST/bench/{summary.md,results.csv,grid.png,bench.json}
# DEST/session.log
# Then: python scripts/ship_default_model.py DEST/model   (installs it as the embedded prior)
set -euo pipefail
src="${1:?usage: device_unpack.sh FILES_AT [DEST]}"
dest="${2:-runs/device}"
mkdir -p "$dest"
if compgen -G "$src/prior.tar.part-*" >/dev/null; then
  cat "$src"/prior.tar.part-* | tar -xf - -C "$dest"
  echo "prior -> $dest/model"
else
  echo "no prior.tar.part-* in $src" >&2
fi
for name in quality bench; do
  if [ -f "$src/$name.tar.gz" ]; then
    mkdir -p "$dest/$name"
    tar -xzf "$src/$name.tar.gz" -C "$dest/$name"
    echo "$name -> $dest/$name"
  fi
done
[ -f "$src/session.log" ] && cp "$src/session.log" "$dest/"
if [ -f "$dest/quality/quality.json" ]; then
  python3 - "$dest/quality/quality.json" <<'PY'
import json, sys
q = json.load(open(sys.argv[1]))
floor = q.get("swd_train_val", {}).get("mean")
print(f"SWD x1e3 samples-val {q['swd_samples_val']['mean']:.2f}", "" if floor is None else f"train-val (floor) {floor:.2f}")
PY
fi
