#!/usr/bin/env bash
# Everything the lent GPU machine checks and times, in one call (each part also runs alone):
#   kernels  scripts/gpu_check.sh         Triton NSA kernel GPU tests + scripts/bench_attention.py
#   decode   scripts/gpu_check_decode.sh  decode-kernel GPU tests + scripts/bench_decode.py
#   share    scripts/gpu_check_share.sh   block-sharing selected attention: GPU tests, timing, 8k training pair
#   cudnn    scripts/gpu_check_cudnn.sh   compressed attention on cuDNN vs Triton: GPU tests, timing, training pair
#   tests    scripts/gpu_tests.sh         every GPU test (pytest -m gpu)
#   train    scripts/gpu_check_train.sh   trainer smoke check (tiny eager/compiled, 124M compiled)
#   speed    scripts/gpu_bench_train.sh   MFU and full-vs-NSA training throughput
#   multi    scripts/gpu_check_multi.sh   2 GPUs: DDP/FSDP2 vs 1 GPU, scaling (needs a 2-GPU kind)
#   scale    scripts/gpu_scale.sh         2 GPUs: compiled scaling of the 124M model alone
#   profile  scripts/gpu_profile.sh       torch.profiler tables: 124M at 1k, full vs NSA at 8k (eager, compiled)
#   tunesmall scripts/gpu_tune_small.sh   tile search at the small model's heads, NSA training with its winners
# Carry .whl (bash /work/shared/tools/gpu-wheels.sh) and .whl_kernels (pytest). PARTS picks and orders the parts:
#   PARTS="kernels decode" bash scripts/gpu_all.sh
# On a machine of several GPUs, GPUS=N runs the parts side by side: part k on GPU k mod N, the parts of one GPU
# one after another (device time is the machine's, so four parts on four GPUs cost what one costs). Each part
# writes to $OUT/<part>/ and its console to $OUT/<part>.log, and stops after PART_TIMEOUT seconds (default 540);
# then everything is packed into $OUT/results.tgz (the device tool brings back few files). Every timing has its
# baseline on the same GPU. The 2-GPU parts (multi, scale) take GPUs k and k+1: name "-" (an idle slot) for
# part k+1 so that nothing else runs on GPU k+1 meanwhile.
#   GPUS=4 PARTS="share decode kernels tests" SKIP_TESTS=1 bash scripts/gpu_all.sh
#   GPUS=4 PARTS="tests decode scale -" bash scripts/gpu_all.sh
set -uo pipefail
cd "$(dirname "$0")/.."
declare -A SCRIPT=([profile]=gpu_profile.sh [kernels]=gpu_check.sh [decode]=gpu_check_decode.sh [share]=gpu_check_share.sh
                   [cudnn]=gpu_check_cudnn.sh [train]=gpu_check_train.sh [speed]=gpu_bench_train.sh
                   [multi]=gpu_check_multi.sh [tests]=gpu_tests.sh [scale]=gpu_scale.sh [tunesmall]=gpu_tune_small.sh)
declare -A WIDE=([multi]=1 [scale]=1)  # parts that take two GPUs
PARTS=${PARTS:-kernels decode train speed}
if [ "${GPUS:-1}" -le 1 ]; then
  for part in $PARTS; do
    [ "$part" = - ] && continue
    echo "=== $part: scripts/${SCRIPT[$part]:?unknown part $part}"
    bash "scripts/${SCRIPT[$part]}"
  done
  exit 0
fi
read -ra all <<<"$PARTS"
for ((k = 0; k < ${#all[@]}; k++)); do
  part=${all[k]}
  [ "$part" = - ] && continue
  : "${SCRIPT[$part]:?gpu_all.sh: unknown part $part}"
  if [ -n "${WIDE[$part]:-}" ] && [ $((k % GPUS)) -eq $((GPUS - 1)) ]; then
    echo "gpu_all.sh: part $part takes two GPUs and would get the last one alone: move it earlier in PARTS" >&2
    exit 1
  fi
done
source scripts/gpu_env.sh  # installs the wheels once, before the parts start
ROOT=$OUT
run_queue() {  # $1 = GPU, then its parts, one after another
  local gpu=$1; shift
  for part in "$@"; do
    [ "$part" = - ] && continue
    local gpus=$gpu
    [ -n "${WIDE[$part]:-}" ] && gpus="$gpu,$((gpu + 1))"
    echo "=== $part: scripts/${SCRIPT[$part]} on GPU $gpus"
    CUDA_VISIBLE_DEVICES=$gpus OUT="$ROOT/$part" timeout "${PART_TIMEOUT:-540}" \
      bash "scripts/${SCRIPT[$part]}" >"$ROOT/$part.log" 2>&1
  done
}
for ((gpu = 0; gpu < GPUS; gpu++)); do
  queue=()
  for ((k = gpu; k < ${#all[@]}; k += GPUS)); do queue+=("${all[k]}"); done
  if [ ${#queue[@]} -gt 0 ]; then run_queue "$gpu" "${queue[@]}" & fi
done
wait
tar czf /tmp/results.tgz -C "$ROOT" . && mv /tmp/results.tgz "$ROOT/" && echo "packed $ROOT/results.tgz"
for part in $PARTS; do [ "$part" = - ] || rm -rf "${ROOT:?}/$part" "$ROOT/$part.log"; done
