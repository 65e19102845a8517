#!/usr/bin/env bash
# Every GPU test of the repo (pytest -m gpu: kernels, decode, NSA model, trainer, loader), on the lent GPU machine.
# Log and JUnit XML under $OUT (or ./gpu_check_out): gpu_tests_all.log/.xml. TEST_TIMEOUT: seconds (default 500).
#   device run (carry .whl and .whl_kernels): bash scripts/gpu_tests.sh
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
timeout "${TEST_TIMEOUT:-500}" $PY -m pytest tests -m gpu -q -p no:cacheprovider --junitxml="$OUT/gpu_tests_all.xml" \
    2>&1 | tee "$OUT/gpu_tests_all.log"
echo "gpu tests exit: $?" | tee -a "$OUT/gpu_tests_all.log"
