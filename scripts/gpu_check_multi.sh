#!/usr/bin/env bash
# 2-GPU check on the lent multi-GPU machine (issue 8): DDP and FSDP2 through torchrun give the losses of one
# GPU with the same global batch, and the scaling efficiency of the 124M model. Results under $OUT.
#   device run (kind nvidia-h100-x2, carry .whl): bash scripts/gpu_check_multi.sh
#   SKIP_LOSSES=1: the scaling benchmark alone; SCALE_ARGS: more overrides for it, e.g. "train.compile=true
#   model.loss_chunk=8192" (compiled, as the MFU benchmark of scripts/gpu_bench_train.sh)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
LOG="$OUT/multi.log"
ONE=${CUDA_VISIBLE_DEVICES:-0}; ONE=${ONE%%,*}  # the 1-GPU runs take the first visible GPU
if [ "${SKIP_LOSSES:-0}" != 1 ]; then
  python3 -m data.prepare 2>&1 | tail -1 | tee -a "$LOG"
  ARGS="model=small train.steps=12 train.batch_tokens=131072 train.micro_batch_size=16 train.val_interval=0 \
    train.log_interval=4 optim.warmup_steps=4"
  train1() { CUDA_VISIBLE_DEVICES=$ONE python3 train.py run_dir=/tmp/runs/$1 $ARGS "${@:2}" 2>&1 | grep -E "step|Error" | tee -a "$LOG"; }
  train2() { python3 -m torch.distributed.run --standalone --nproc_per_node=2 train.py run_dir=/tmp/runs/$1 $ARGS "${@:2}" 2>&1 | grep -E "step|Error" | tee -a "$LOG"; }
  echo "== 1 GPU" | tee -a "$LOG"; train1 one
  echo "== 2 GPUs DDP" | tee -a "$LOG"; train2 ddp train.parallel=ddp
  echo "== 2 GPUs FSDP2" | tee -a "$LOG"; train2 fsdp train.parallel=fsdp
  for r in one ddp fsdp; do cp /tmp/runs/$r/metrics.jsonl "$OUT/multi_$r.metrics.jsonl"; done
fi
BENCH="--steps 6 --warmup 3 --breakdown-steps 0 -- model=small train.batch_tokens=524288 train.micro_batch_size=32 ${SCALE_ARGS:-}"
echo "== scaling (${SCALE_ARGS:-not compiled})" | tee -a "$LOG"
CUDA_VISIBLE_DEVICES=$ONE python3 scripts/bench_train.py --out "$OUT/scale_1gpu.json" $BENCH 2>&1 | grep "tok/s" | tee -a "$LOG"
python3 -m torch.distributed.run --standalone --nproc_per_node=2 scripts/bench_train.py --out "$OUT/scale_2gpu.json" $BENCH 2>&1 | grep "tok/s" | tee -a "$LOG"
