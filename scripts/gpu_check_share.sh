#!/usr/bin/env bash
# The block-sharing selected-attention kernels on the GPU (issue 5): their bf16 GPU tests, their timing against
# the one-position kernels (bench_attention.py --sections share), and the 8k training pair where NSA trails
# full attention, with share 1 and 4 (NSA_TRITON_TILES). Results under $OUT (or ./gpu_check_out):
# share_tests.log, share_bench.log/.json, share_train.log, train_{full,nsa_share1,nsa_share4}_t8192.json.
#   device run (carry .whl): bash scripts/gpu_check_share.sh     (SKIP_TESTS=1: timing only)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout "${TEST_TIMEOUT:-150}" $PY -m pytest tests/test_kernels_gpu.py -q -s -p no:cacheprovider -k selected \
      2>&1 | tee "$OUT/share_tests.log"
  echo "share gpu tests exit: $?" | tee -a "$OUT/share_tests.log"
fi

timeout "${BENCH_TIMEOUT:-200}" $PY scripts/bench_attention.py --sections share --out "$OUT/share_bench.json" 2>&1 \
    | tee "$OUT/share_bench.log"
echo "bench exit: $?" | tee -a "$OUT/share_bench.log"

LOG="$OUT/share_train.log"
ARGS="model=small_gqa16 model.max_seq_len=8192 train.batch_tokens=32768 train.micro_batch_size=1 train.compile=true \
  train.compile_mode=reduce-overhead"
train() { local name=$1; shift; echo "== $name" | tee -a "$LOG"
  timeout "${TRAIN_TIMEOUT:-150}" $PY scripts/bench_train.py --out "$OUT/train_${name}_t8192.json" --steps 3 --warmup 3 \
    --breakdown-steps 0 -- $ARGS "$@" 2>&1 | grep -v '%|' | tail -3 | tee -a "$LOG"; }
train full attention=full
for share in 1 4; do
  echo "{\"selected_fwd\": {\"small\": {\"share\": $share}}, \"selected_dq\": {\"small\": {\"share\": $share}}}" \
    > "/tmp/share$share.json"
  NSA_TRITON_TILES="/tmp/share$share.json" train "nsa_share$share" attention=nsa
done
