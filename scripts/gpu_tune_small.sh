#!/usr/bin/env bash
# Tile sizes for the long-context training model (issue 8): the kernel benchmark's tile search at the heads of
# configs/model/small_gqa16.yaml (Hq=16, Hkv=1, D=64; GPU_TILES was tuned at Hq=64, Hkv=4, D=128), then NSA
# training throughput with the winners (NSA_TRITON_TILES), as scripts/gpu_bench_train.sh times it. TUNE_T: the
# search's sequence length (default 32768; at 65536 compressed attention goes to cuDNN, so the banded kernels'
# search times the window branch), TUNE_KERNELS: which kernels (default all), ATTNS: what the tuned run trains
# (default nsa; "full nsa" puts full attention's baseline in the same call).
# Results: $OUT/tune_small.json/.log, $OUT/tiles_small.json, $OUT/tuned/ (gpu_bench_train.sh's files).
#   device run (carry .whl): TS="32768" ACT_CKPT=false TRAIN_ARGS="train.compile=true \
#       train.compile_mode=reduce-overhead" bash scripts/gpu_tune_small.sh
#   the 64k pair after a search of the window's dK/dV options: TUNE_T=65536 TUNE_KERNELS=band_dkdv TS=65536 \
#       ATTNS="full nsa" ACT_CKPT=false STEP_ARGS="--steps 2 --warmup 3 --breakdown-steps 0" TRAIN_ARGS="..." \
#       bash scripts/gpu_tune_small.sh
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
# shellcheck disable=SC2086
timeout "${TUNE_TIMEOUT:-240}" $PY scripts/bench_attention.py --sections tune --tune-shape small \
    --tune-T "${TUNE_T:-32768}" ${TUNE_KERNELS:+--tune-kernels $TUNE_KERNELS} \
    --out "$OUT/tune_small.json" --tiles-out "$OUT/tiles_small.json" 2>&1 | tee "$OUT/tune_small.log"
[ -f "$OUT/tiles_small.json" ] || { echo "gpu_tune_small.sh: the tile search wrote no winners" >&2; exit 1; }
mkdir -p "$OUT/tuned"
NSA_TRITON_TILES="$OUT/tiles_small.json" OUT="$OUT/tuned" SKIP_MFU=1 ATTNS="${ATTNS:-nsa}" bash scripts/gpu_bench_train.sh
