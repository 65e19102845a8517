#!/usr/bin/env bash
# 2-GPU scaling of the 124M model, compiled as the MFU benchmark (issue 8): scripts/gpu_check_multi.sh's scaling
# benchmark alone (no loss comparison). Results under $OUT: scale_1gpu.json, scale_2gpu.json, multi.log.
#   device run (a 2-GPU kind, carry .whl): bash scripts/gpu_scale.sh
export SKIP_LOSSES=1 SCALE_ARGS="${SCALE_ARGS:-train.compile=true model.loss_chunk=8192}"
exec bash "$(dirname "$0")/gpu_check_multi.sh"
