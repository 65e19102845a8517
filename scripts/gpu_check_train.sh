#!/usr/bin/env bash
# GPU smoke check of the trainer on the lent GPU machine (no network, no hydra/datasets installed):
#   bash /work/shared/tools/gpu-wheels.sh   # here, once: fills .whl/
#   device run (carry .whl): bash scripts/gpu_check_train.sh
# Trains the tiny model (eager and compiled), then the 124M `small` model at T=1024 for a few compiled steps,
# runs the trainer's GPU tests (tests/test_train.py -m gpu),
# and copies the metrics into $OUT.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
run() { local name=$1; shift; echo "== $name: $*"; python3 train.py run_dir=/tmp/runs/$name "$@" 2>&1 | grep -v '%|' | tee "$OUT/$name.log"; cp /tmp/runs/$name/metrics.jsonl "$OUT/$name.metrics.jsonl" 2>/dev/null; }
run tiny_eager train.steps=30 train.log_interval=10
run tiny_compiled train.steps=30 train.log_interval=10 train.compile=true
run small_compiled model=small train.steps=30 train.batch_tokens=262144 train.micro_batch_size=16 \
  train.compile=true train.log_interval=5 train.val_interval=0 train.ckpt_interval=0
# GPU tests of the trainer (CUDA graphs vs plain compile)
timeout "${TEST_TIMEOUT:-400}" $PY -m pytest tests/test_train.py -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/train_gpu_tests.log"
