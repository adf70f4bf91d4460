#!/usr/bin/env bash
# Install what the tests need into ./.venv (every extra but `metrics`: the Real-ESRGAN and
# identity tests skip without theirs), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,faces,app,upscale,identity
exec .venv/bin/python -m pytest -q "$@"
