#!/usr/bin/env bash
# The main job, end to end, on the embedded default face prior:
#   1. set up ./.venv,  2. degrade some portraits (random corruption, severity 4),
#   3. restore them with ODEdit and SDEdit into out/demo/.
# Usage: bash scripts/demo.sh [IMAGES_DIR] [extra `odedit restore` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
images="${1:-../shared/data/samples/celebahq-1024}"
shift || true
if [ ! -d "$images" ]; then
  echo "demo: no image folder at '$images'; pass one: bash scripts/demo.sh PATH/TO/FACES" >&2
  exit 2
fi
out=out/demo
odedit=.venv/bin/odedit
"$odedit" corrupt "$images" -o "$out/degraded" --corruption random --severity 4 --seed 0 --size 64 --overwrite
"$odedit" restore "$out/degraded" -o "$out/odedit" --method odedit --preset medium --overwrite "$@"
"$odedit" restore "$out/degraded" -o "$out/sdedit" --method sdedit --strength 0.5 --overwrite "$@"
echo "demo: degraded inputs in $out/degraded, restorations in $out/odedit and $out/sdedit"
