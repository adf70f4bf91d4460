#!/usr/bin/env bash
# Prepare the checkout for one call of the GPU machine (`device run`), here, on the CPU side.
#
#   bash scripts/device_prepare.sh [SHARED_DATA_DIR]      (default ../shared/data)
#
# - copies celeba64/train.zip and val.zip into ./device_data/ (ignored by git, carried);
# - downloads the wheels the GPU machine lacks into ./.whl/ (ignored, carried): diffusers at
#   the version installed here and importlib_metadata (diffusers needs it; the machine's
#   image has accelerate, safetensors, huggingface-hub, tqdm, scipy, pillow);
# - prints the size of what will travel (the limit is 64 MiB).
# Then: device run with carry ["device_data", ".whl"] and the command printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}"
PY="${PYTHON:-.venv/bin/python}"
exclude=.git/info/exclude
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for pat in /device_data/ /.whl/; do
  grep -qxF "$pat" "$exclude" || echo "$pat" >>"$exclude"
done
mkdir -p device_data .whl
for f in train.zip val.zip; do
  [ -f "$data/celeba64/$f" ] || { echo "missing $data/celeba64/$f" >&2; exit 1; }
  cp -u "$data/celeba64/$f" device_data/
done
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -f .whl/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "diffusers==$(ver diffusers)" "importlib_metadata==$(ver importlib_metadata)"
du -sh device_data .whl
# what travels: tracked and untracked-not-ignored files that exist, plus the carried folders
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
extra=$(du -sb device_data .whl | awk '{s += $1} END {print s}')
mib=$(((tree + extra) / 1048576))
echo "travels: $mib MiB of 64 (tree $((tree / 1048576)) MiB, carried $((extra / 1048576)) MiB)"
if [ "$mib" -ge 62 ]; then
  echo "too close to the 64 MiB limit: carry less (e.g. a smaller train.zip) or ignore large files" >&2
  exit 1
fi
echo 'device run: carry ["device_data", ".whl"], timeout_s 600, command: bash scripts/device_session.sh'
