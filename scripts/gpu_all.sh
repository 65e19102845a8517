#!/usr/bin/env bash
# Everything the lent GPU machine checks and times, in one call (each part also runs alone):
#   kernels  scripts/gpu_check.sh         Triton NSA kernel GPU tests + scripts/bench_attention.py
#   decode   scripts/gpu_check_decode.sh  decode-kernel GPU tests + scripts/bench_decode.py
#   share    scripts/gpu_check_share.sh   block-sharing selected attention: GPU tests, timing, 8k training pair
#   train    scripts/gpu_check_train.sh   trainer smoke check (tiny eager/compiled, 124M compiled)
#   speed    scripts/gpu_bench_train.sh   MFU and full-vs-NSA training throughput
#   multi    scripts/gpu_check_multi.sh   2 GPUs: DDP/FSDP2 vs 1 GPU, scaling (needs a 2-GPU kind)
#   profile  scripts/gpu_profile.sh       torch.profiler tables: 124M at 1k, full vs NSA at 8k (eager, compiled)
# Carry .whl (bash /work/shared/tools/gpu-wheels.sh). PARTS picks and orders the parts:
#   PARTS="kernels decode" bash scripts/gpu_all.sh
set -uo pipefail
cd "$(dirname "$0")/.."
declare -A SCRIPT=([profile]=gpu_profile.sh [kernels]=gpu_check.sh [decode]=gpu_check_decode.sh [share]=gpu_check_share.sh [train]=gpu_check_train.sh
                   [speed]=gpu_bench_train.sh [multi]=gpu_check_multi.sh)
for part in ${PARTS:-kernels decode train speed}; do
  echo "=== $part: scripts/${SCRIPT[$part]:?unknown part $part}"
  bash "scripts/${SCRIPT[$part]}"
done
