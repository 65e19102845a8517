#!/usr/bin/env bash
# One GPU session for NSA decoding (issue 7): the decode kernels' GPU tests, then scripts/bench_decode.py.
# Logs and results go to $OUT (or ./gpu_check_out): gpu.txt, decode_tests.log/.xml, decode_bench.log/.json.
#   bash scripts/gpu_check_decode.sh
#   TEST_TIMEOUT / BENCH_TIMEOUT: seconds for each step; DECODE_ARGS: extra arguments for bench_decode.py
#   (e.g. "--budget-s 150": start no new measurement after that many seconds); SKIP_TESTS=1: the benchmark alone.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-110}" $PY -m pytest tests/test_kernels_decode_gpu.py -q -s -p no:cacheprovider \
      --junitxml="$OUT/decode_tests.xml" 2>&1 | tee "$OUT/decode_tests.log"
  echo "decode gpu tests exit: $?" | tee -a "$OUT/decode_tests.log"
fi

# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-200}" $PY scripts/bench_decode.py --out "$OUT/decode_bench.json" ${DECODE_ARGS:-} 2>&1 \
    | tee "$OUT/decode_bench.log"
echo "bench exit: $?" | tee -a "$OUT/decode_bench.log"
