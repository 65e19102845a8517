#!/usr/bin/env bash
# One GPU session for the Triton NSA kernels: the GPU tests, then the attention benchmark.
# Logs and results go to $OUT (or ./gpu_check_out): gpu.txt, gpu_tests.log, gpu_tests.xml, bench.log, bench.json.
#   bash scripts/gpu_check.sh                      # tests + full benchmark
#   TEST_TIMEOUT=0 bash scripts/gpu_check.sh       # benchmark only;  BENCH_ARGS="--sections main --T 32768" to narrow it
# pytest is installed from .whl_kernels/ (wheels carried by the caller) when the machine lacks it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

if ! $PY -c "import pytest" 2>/dev/null && ls .whl_kernels/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl_kernels/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if [ "${TEST_TIMEOUT:-150}" != "0" ]; then
    timeout "${TEST_TIMEOUT:-150}" $PY -m pytest tests/test_kernels_gpu.py -q -s -p no:cacheprovider \
        --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log"
    echo "gpu tests exit: $?" | tee -a "$OUT/gpu_tests.log"
fi

if [ "${BENCH_TIMEOUT:-190}" != "0" ]; then
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-190}" $PY scripts/bench_attention.py --out "$OUT/bench.json" ${BENCH_ARGS:-} 2>&1 \
        | tee "$OUT/bench.log"
    echo "bench exit: $?" | tee -a "$OUT/bench.log"
fi
