#!/usr/bin/env bash
# The main job, end to end, on the embedded default face prior:
#   1. set up ./.venv,  2. degrade some portraits (random corruption, severity 4),
#   3. restore them with ODEdit and SDEdit into out/demo/,
#   4. restore two whole degraded photos (face detection + paste-back) into out/demo/photos.
# Usage: bash scripts/demo.sh [IMAGES_DIR] [extra `odedit restore` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh faces
images="${1:-../shared/data/samples/celebahq-1024}"
shift || true
if [ ! -d "$images" ]; then
  echo "demo: no image folder at '$images'; pass one: bash scripts/demo.sh PATH/TO/FACES" >&2
  exit 2
fi
out=out/demo
odedit=.venv/bin/odedit
"$odedit" corrupt "$images" -o "$out/degraded" --corruption random --severity 4 --seed 0 --size 64 --overwrite
"$odedit" restore "$out/degraded" -o "$out/odedit" --method odedit --overwrite "$@"
"$odedit" restore "$out/degraded" -o "$out/sdedit" --method sdedit --strength 0.5 --overwrite "$@"
# Whole photos: two portraits at 384 px, degraded, then restored in place.
mkdir -p "$out/photos_in"
find "$images" -maxdepth 1 -type f \( -name '*.png' -o -name '*.jpg' \) | sort | head -2 | while read -r f; do
  cp "$f" "$out/photos_in/"
done
"$odedit" corrupt "$out/photos_in" -o "$out/photos_degraded" --corruption gaussian_noise --severity 3 --seed 0 --size 384 --overwrite
"$odedit" restore "$out/photos_degraded" -o "$out/photos" --faces auto --overwrite "$@"
echo "demo: degraded inputs in $out/degraded, restorations in $out/odedit and $out/sdedit;"
echo "      whole photos: $out/photos_degraded -> $out/photos"
