#!/usr/bin/env bash
# Set up, lint, then run the CPU test suite (GPU tests are skipped without a GPU). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
