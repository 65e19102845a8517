#!/usr/bin/env bash
# Set up, then train the default tiny model on the default offline dataset (CPU or GPU). Extra arguments are
# Hydra overrides, e.g. `bash scripts/quickstart.sh attention=nsa_tiny train.steps=500`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
.venv/bin/python train.py "$@"
