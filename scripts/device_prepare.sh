#!/usr/bin/env bash
# Prepare the checkout for one call of the GPU machine (`device run`), here, on the CPU side.
#
#   bash scripts/device_prepare.sh [SHARED_DATA_DIR]      (default ../shared/data)
#
# - packs celeba64/train.zip losslessly into ./device_data/train.jpgs (scripts/device_data.py:
#   the JPEGs' shared header once; 40 -> 26 MB; device_session.sh rebuilds the zip there) and
#   copies the first VAL_N (300) val faces, all that is scored there, into device_data/val.zip;
# - downloads the wheels the GPU machine lacks into ./.whl/ (ignored, carried): diffusers at
#   the version installed here, without its pipeline subpackages (odedit uses its models,
#   schedulers and training utilities; 6.2 -> 2.2 MB), and importlib_metadata (diffusers needs
#   it; the machine's image has accelerate, safetensors, huggingface-hub, tqdm, scipy, pillow);
# - prints the size of what will travel (the limit is 64 MiB: the tree alone is ~42 MiB, 31 of
#   it the embedded prior). With --drop-docs it also takes docs/img and docs/data (10 MiB, not
#   needed there) out of git's index and ignores them for the call; `--restore-docs` puts them
#   back afterwards (nothing is deleted from disk; do not commit in between).
# Then: device run with carry ["device_data", ".whl"] and the command printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  --restore-docs)
    git reset -q -- docs/img docs/data
    sed -i '\#^/docs/img/$#d; \#^/docs/data/$#d' .git/info/exclude
    git status --short -- docs | head
    echo "docs/img and docs/data are tracked again"
    exit 0
    ;;
  --drop-docs)
    drop_docs=1
    shift
    ;;
esac
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
done
rm -f device_data/*
"$PY" scripts/device_data.py pack "$data/celeba64/train.zip" device_data/train.jpgs
"$PY" scripts/device_data.py head "$data/celeba64/val.zip" device_data/val.zip "${VAL_N:-300}"
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -f .whl/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "diffusers==$(ver diffusers)" "importlib_metadata==$(ver importlib_metadata)"
# diffusers without pipelines/*/ and modular_pipelines/*/ (their top-level modules stay: the
# training utilities import DiffusionPipeline); RECORD is rewritten to match
"$PY" - .whl/diffusers-*.whl <<'PY'
import os, re, sys, zipfile
src = sys.argv[1]
drop = re.compile(r"diffusers/(pipelines|modular_pipelines)/[^/]+/").match
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    for info in zin.infolist():
        if drop(info.filename):
            continue
        data = zin.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(l + "\n" for l in data.decode().splitlines() if not drop(l.split(",")[0])).encode()
        zout.writestr(info.filename, data)
os.replace(src + ".tmp", src)
PY
if [ -n "${drop_docs:-}" ]; then
  for pat in /docs/img/ /docs/data/; do grep -qxF "$pat" "$exclude" || echo "$pat" >>"$exclude"; done
  git rm -r -q --cached docs/img docs/data
  echo "docs/img and docs/data are out of the index for the call: afterwards run $0 --restore-docs"
fi
du -sh device_data .whl
# what travels: tracked and untracked-not-ignored files that exist, plus the carried folders
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
extra=$(du -sb device_data .whl | awk '{s += $1} END {print s}')
mib=$(((tree + extra) / 1048576))
echo "travels: $mib MiB of 64 (tree $((tree / 1048576)) MiB, carried $((extra / 1048576)) MiB)"
if [ "$mib" -ge 62 ]; then
  echo "too close to the 64 MiB limit: carry less, or run with --drop-docs" >&2
  exit 1
fi
echo 'device run: carry ["device_data", ".whl"], timeout_s 600, command: bash scripts/device_session.sh'
