#!/usr/bin/env bash
# Compressed attention through cuDNN (kernels/cudnn_compressed.py) on the lent GPU, against the Triton banded
# kernel in the same call: its GPU tests (and, unless QUICK=1, the NSA model's and CUDA-graph training's GPU tests
# with it forced on), each backend alone (bench_attention.py --sections compressed at each of TS, "" skips it:
# the main, small-model and paper heads, each cuDNN KV layout, the error against Triton), the main table (at
# MAIN_TS) and the paper shape with compressed attention on Triton and on auto (cuDNN where it measured faster),
# cuDNN full attention as the baseline in each, and the training pair at TRAIN_TS (small_gqa16, CUDA graphs) for
# full attention, NSA on Triton and NSA on auto. Results under $OUT (or ./gpu_check_out):
# cudnn_tests.log, cudnn_{cmp,main_triton,main_auto,paper_triton,paper_auto}.log/.json, bench_train.log, train_*.json.
#   device run (carry .whl): bash scripts/gpu_check_cudnn.sh   (~12 min in all: past one call's limit, so split it:
#   SKIP_TRAIN=1 for the tests and kernel timings; SKIP_KERNELS=1 for the training pair, ~3 min per length)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"

if [ "${SKIP_KERNELS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-150}" $PY -m pytest tests/test_kernels_cudnn_compressed.py -m gpu -q -s -p no:cacheprovider \
      2>&1 | tee "$OUT/cudnn_tests.log"
  echo "cudnn gpu tests exit: $?" | tee -a "$OUT/cudnn_tests.log"
  if [ "${QUICK:-0}" != 1 ]; then  # the NSA model and compiled CUDA-graph training on cuDNN (bf16 autocast)
    NSA_COMPRESSED_BACKEND=cudnn timeout "${TEST_TIMEOUT:-150}" $PY -m pytest tests/test_nsa_model.py \
        tests/test_train.py -m gpu -q -s -p no:cacheprovider -k "cuda_kernels or cuda_graph" 2>&1 \
        | tee -a "$OUT/cudnn_tests.log"
    echo "model/training gpu tests on cuDNN exit: $?" | tee -a "$OUT/cudnn_tests.log"
  fi

  bench() { local name=$1; shift
    timeout "${BENCH_TIMEOUT:-300}" $PY scripts/bench_attention.py --out "$OUT/cudnn_$name.json" "$@" 2>&1 \
        | tee "$OUT/cudnn_$name.log"
    echo "bench exit: $?" | tee -a "$OUT/cudnn_$name.log"; }
  # shellcheck disable=SC2086
  [ -n "${TS-x}" ] && bench cmp --sections compressed --T ${TS:-8192 16384 32768 65536}
  for backend in triton auto; do
    # shellcheck disable=SC2086
    bench "main_$backend" --sections main --T ${MAIN_TS:-8192 32768 65536} --compressed-backend $backend \
        --baselines cudnn
    bench "paper_$backend" --sections paper --compressed-backend $backend --baselines cudnn
  done
fi

if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  SKIP_MFU=1 ACT_CKPT=false ATTNS="full nsa_triton nsa_auto" TS="${TRAIN_TS:-8192 65536}" \
    STEP_ARGS="--steps 2 --warmup 3 --breakdown-steps 0" \
    TRAIN_ARGS="train.compile=true train.compile_mode=reduce-overhead" bash scripts/gpu_bench_train.sh
fi
