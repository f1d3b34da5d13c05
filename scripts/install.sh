#!/usr/bin/env bash
# Creates .venv with the sam2refine engine; with --test also its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
pip install -q --upgrade pip setuptools wheel
python -c "import torch, torchvision" 2>/dev/null || pip install -q torch==2.14.1 torchvision==0.29.1
# sam2 1.1.0 is an sdist; building it without its CUDA extension takes seconds, not minutes.
python -c "import sam2" 2>/dev/null || SAM2_BUILD_CUDA=0 pip install -q --no-build-isolation sam2==1.1.0
if [ "${1:-}" = "--test" ]; then
  pip install -q -e ".[test]"
else
  pip install -q -e .
fi
