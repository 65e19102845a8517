#!/usr/bin/env bash
# One GPU session for the Triton NSA kernels: the GPU tests and the attention benchmark.
# Logs and results go to $OUT (or ./gpu_check_out): gpu.txt, gpu_tests.log/.xml, bench.log/.json, tiles.json.
#   bash scripts/gpu_check.sh                                  # tests, then the full benchmark
#   ORDER="bench tests" BENCH_ARGS="--sections tune main" bash scripts/gpu_check.sh
#       # tune tile sizes first; main uses the winners, and so do the tests (NSA_TRITON_TILES=$OUT/tiles.json)
#   TEST_TIMEOUT / BENCH_TIMEOUT: seconds for each step; TEST_K: pytest -k expression (a subset of the tests).
# pytest is installed from .whl_kernels/ (wheels carried by the caller) when the machine lacks it.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"

run_tests() {
    if [ -f "$OUT/tiles.json" ]; then export NSA_TRITON_TILES="$OUT/tiles.json"; fi
    timeout "${TEST_TIMEOUT:-150}" $PY -m pytest tests/test_kernels_gpu.py -q -s -p no:cacheprovider -k "${TEST_K:-}" \
        --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log"
    echo "gpu tests exit: $? (NSA_TRITON_TILES=${NSA_TRITON_TILES:-})" | tee -a "$OUT/gpu_tests.log"
}

run_bench() {
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-190}" $PY scripts/bench_attention.py --out "$OUT/bench.json" \
        --tiles-out "$OUT/tiles.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
    echo "bench exit: $?" | tee -a "$OUT/bench.log"
}

for step in ${ORDER:-tests bench}; do
    "run_$step"
done
