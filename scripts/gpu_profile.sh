#!/usr/bin/env bash
# Where training time goes on the lent GPU (issue 8): scripts/bench_train.py --profile for the 124M model at
# T=1024 (compiled) and for full attention vs NSA at 8k (model=small_gqa16), eager, compiled, and compiled with
# CUDA graphs (train.compile_mode=reduce-overhead; runs named *_graphs, not in the default list; the *_t32768_graphs
# and *_t65536_graphs runs: the long-context pair without activation checkpointing). NSA_COMPRESSED_BACKEND
# (kernels/ops.py) passes through to every run.
# Results: $OUT/profile.log and $OUT/profiles.tgz (per run: JSON, op/kernel table, Chrome trace).
#   device run (carry .whl): bash scripts/gpu_profile.sh
#   RUNS="nsa_t8192_eager nsa_t8192_compiled" bash scripts/gpu_profile.sh     # a subset
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
LOG="$OUT/profile.log"
P=/tmp/profiles
mkdir -p "$P"
declare -A ARGS=(
  [small_t1024]="--steps 6 --warmup 3 -- model=small model.loss_chunk=8192 train.batch_tokens=524288 train.micro_batch_size=32 train.compile=true"
)
GQA="model=small_gqa16 model.max_seq_len=8192 train.batch_tokens=32768 train.micro_batch_size=1"
for attn in full nsa; do
  ARGS[${attn}_t8192_eager]="--steps 3 --warmup 2 -- $GQA attention=$attn"
  ARGS[${attn}_t8192_compiled]="--steps 3 --warmup 2 -- $GQA attention=$attn train.compile=true"
  ARGS[${attn}_t8192_graphs]="--steps 3 --warmup 3 -- $GQA attention=$attn train.compile=true train.compile_mode=reduce-overhead"
  # 32k and 64k as gpu_bench_train.sh times them with graphs, activation checkpointing off
  for T in 32768 65536; do
    ARGS[${attn}_t${T}_graphs]="--steps 2 --warmup 3 -- model=small_gqa16 model.max_seq_len=$T
      train.batch_tokens=$((4 * T)) train.micro_batch_size=1 attention=$attn train.compile=true
      train.compile_mode=reduce-overhead train.activation_checkpointing=false"
  done
done
for name in ${RUNS:-small_t1024 full_t8192_eager nsa_t8192_eager full_t8192_compiled nsa_t8192_compiled}; do
  echo "== $name: ${ARGS[$name]}" | tee -a "$LOG"
  # shellcheck disable=SC2086
  timeout "${RUN_TIMEOUT:-240}" python3 scripts/bench_train.py --breakdown-steps 1 --out "$P/$name.json" \
    --profile "$P/$name.txt" ${ARGS[$name]} 2>&1 | grep -v '%|' | tail -5 | tee -a "$LOG"
  head -45 "$P/$name.txt" >> "$LOG" 2>/dev/null
done
tar czf "$OUT/profiles.tgz" -C "$P" .
