#!/usr/bin/env bash
# Training-throughput benchmarks on the lent GPU (issue 8): MFU of the 124M model at T=1024 and
# full attention vs NSA training tokens/s at long context. Results: $OUT/train_*.json + $OUT/bench_train.log.
#   bash /work/shared/tools/gpu-wheels.sh          # here, once: fills .whl/
#   device run (carry .whl): bash scripts/gpu_bench_train.sh
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
LOG="$OUT/bench_train.log"
bench() { local name=$1; shift; echo "== $name: $*" | tee -a "$LOG"
  python3 scripts/bench_train.py --out "$OUT/train_$name.json" "$@" 2>&1 | grep -v '%|' | tail -4 | tee -a "$LOG"; }
# 1. MFU: GPT-2 small shape, T=1024, 0.5M-token batch, compiled (SKIP_MFU=1 leaves it out). MFU_RUNS picks
#    variants, each timed in this process's GPU after the one before: mb32 (the reference), mb64 (micro-batch 64),
#    graphs (CUDA graphs), autotune (max-autotune-no-cudagraphs: Triton matmul autotuning, slow to compile),
#    coord (Inductor's coordinate-descent tuning of its own pointwise / reduction kernels: the norms, SwiGLU, RoPE),
#    h128 / mb64_h128 / mb128_h128 (6 heads of 128 instead of 12 of 64: same parameters and FLOPs, the attention kernels'
#    better tile),
#    *_bf16res (model.residual_dtype=compute: the residual stream in bf16 between the blocks; 3-7% faster; its loss
#    against the float32 stream: docs/training.md)
declare -A MFU=([mb32]="train.micro_batch_size=32" [mb64]="train.micro_batch_size=64"
                [graphs]="train.micro_batch_size=32 train.compile_mode=reduce-overhead"
                [autotune]="train.micro_batch_size=32 train.compile_mode=max-autotune-no-cudagraphs"
                [coord]="train.micro_batch_size=32"
                [h128]="train.micro_batch_size=32 model.n_head=6 model.n_kv_head=6"
                [mb64_h128]="train.micro_batch_size=64 model.n_head=6 model.n_kv_head=6"
                [mb128_h128]="train.micro_batch_size=128 model.n_head=6 model.n_kv_head=6"
                [mb32_bf16res]="train.micro_batch_size=32 model.residual_dtype=compute"
                [mb64_h128_bf16res]="train.micro_batch_size=64 model.n_head=6 model.n_kv_head=6 model.residual_dtype=compute"
                [mb128_h128_bf16res]="train.micro_batch_size=128 model.n_head=6 model.n_kv_head=6 model.residual_dtype=compute")
declare -A MFU_ENV=([coord]="TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1")  # Inductor reads these at import
if [ "${SKIP_MFU:-0}" != 1 ]; then
  for v in ${MFU_RUNS:-mb32}; do
    (
      # shellcheck disable=SC2163
      [ -n "${MFU_ENV[$v]:-}" ] && export "${MFU_ENV[$v]}"
      # shellcheck disable=SC2086
      bench "small_t1024$([ "$v" = mb32 ] || echo "_$v")" --steps 10 --warmup 3 -- model=small model.loss_chunk=8192 \
        train.batch_tokens=524288 train.compile=true ${MFU[$v]:?unknown MFU run $v}
    )
  done
fi
# 2. full vs NSA, same NSA-friendly model (16 query heads per KV head), one sequence per micro-step (TS: lengths;
#    TRAIN_ARGS: more overrides for both, e.g. "train.compile=true train.compile_mode=reduce-overhead" for graphs;
#    STEP_ARGS: bench_train.py's step counts, default "--steps 3 --warmup 2 --breakdown-steps 1"; TS="" skips it;
#    ACT_CKPT: activation checkpointing true/false for every length, default on from 32k; ATTNS: which of
#    full, nsa and nsa_<backend> to run: nsa takes the default compressed backend (auto, or NSA_COMPRESSED_BACKEND
#    if set), nsa_triton, nsa_auto and nsa_cudnn set NSA_COMPRESSED_BACKEND (kernels/ops.py)
for T in ${TS-8192 32768 65536}; do
  AC=${ACT_CKPT:-$([ "$T" -ge 32768 ] && echo true || echo false)}
  for ATTN in ${ATTNS:-full nsa}; do
    backend=${NSA_COMPRESSED_BACKEND:-auto}; [ "$ATTN" != "${ATTN#nsa_}" ] && backend=${ATTN#nsa_}
    # shellcheck disable=SC2086
    NSA_COMPRESSED_BACKEND=$backend bench "${ATTN}_t$T" ${STEP_ARGS:---steps 3 --warmup 2 --breakdown-steps 1} -- \
      model=small_gqa16 attention=${ATTN%_*} \
      model.max_seq_len=$T train.batch_tokens=$((4 * T)) train.micro_batch_size=1 \
      train.activation_checkpointing=$AC ${TRAIN_ARGS:-}
  done
done
