#!/usr/bin/env bash
# Sourced by every scripts/gpu_*.sh: the set-up one call on the lent GPU machine needs.
# - installs the carried wheels (.whl/ from /work/shared/tools/gpu-wheels.sh: hydra, omegaconf, datasets;
#   .whl_kernels/: pytest where missing) into /tmp/site, once per machine;
# - sets the environment (offline hub, no wandb, unbuffered Python, NVLink multicast off as the hosts require);
# - creates $OUT (default ./gpu_check_out) and records the card and versions in $OUT/gpu.txt.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PY=${PY:-python3}
# Once per machine (the marker also keeps parts that gpu_all.sh runs side by side from installing at once).
if [ ! -f /tmp/site/.installed ]; then
  for wheels in .whl .whl_kernels; do
    if ls "$wheels"/*.whl >/dev/null 2>&1; then
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl && touch /tmp/site/.installed
    fi
  done
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit,driver_version --format=csv \
  | tee "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
