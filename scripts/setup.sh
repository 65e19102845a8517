#!/usr/bin/env bash
# Create .venv and install the project with its dev tools. Idempotent: a second run installs nothing new.
# torch: TORCH_SPEC picks the build (default torch==2.13.0, the CPU build on the project's CI machines);
# on a GPU node install your CUDA build of torch first (or set TORCH_SPEC) and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/pip install -q -e '.[dev]'
