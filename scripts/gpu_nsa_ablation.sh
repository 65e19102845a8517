#!/usr/bin/env bash
# NSA ablations of the gpu-small reproduction (issue 9), side by side on a 4-GPU machine: each variant trains
# the reproduction's NSA model (experiment=repro_gpu_small_nsa, seed SEED, retrieval probes with the needle-
# selection diagnostic) with its own extra overrides on two GPUs (torchrun), then runs the reproduction's
# evaluation (the eval overrides of scripts/reproduce.py's gpu-small preset) on the first of them.
#   device run (carry .whl): VARIANTS="shared_kv:attention.shared_kv=true window64:attention.window=64" \
#       SEED=3 bash scripts/gpu_nsa_ablation.sh
# A variant is name:override[;override...]. Each writes $WORK/<name>/{runs,eval,logs}/ (WORK default /tmp/abl),
# packed without checkpoints into $OUT/ablation.tgz. docs/results/gpu-small-ablations/NOTES.md says how the
# reports beside it were built from these and the full-attention run of the same seed.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
WORK=${WORK:-/tmp/abl}
SEED=${SEED:-3}
mapfile -t EVAL < <($PY -c "import sys; sys.path.insert(0, 'scripts'); from reproduce import SCALES
print('\n'.join(SCALES['gpu-small'].eval_overrides))")
read -ra variants <<<"${VARIANTS:?name:override[;override...] per variant}"
run_variant() {  # $1 = name:overrides, $2 = CUDA_VISIBLE_DEVICES
  local name=${1%%:*} sets=${1#*:} dir="$WORK/${1%%:*}"
  local first=${2%%,*}
  mkdir -p "$dir/logs"
  IFS=";" read -ra extra <<<"$sets"
  echo "== $name on GPUs $2: ${extra[*]}"
  CUDA_VISIBLE_DEVICES=$2 timeout "${TRAIN_TIMEOUT:-420}" $PY -m torch.distributed.run --standalone --nproc_per_node=2 \
    train.py experiment=repro_gpu_small_nsa run_dir="$dir/runs/nsa-s$SEED" train.seed="$SEED" \
    train.val_probe_selection=true "${extra[@]}" >"$dir/logs/train_nsa-s$SEED.log" 2>&1
  echo "   $name: train exit $?"
  CUDA_VISIBLE_DEVICES=$first timeout "${EVAL_TIMEOUT:-200}" $PY eval.py checkpoint="$dir/runs/nsa-s$SEED" \
    out_dir="$dir/eval/nsa-s$SEED" "${EVAL[@]}" >"$dir/logs/eval_nsa-s$SEED.log" 2>&1
  echo "   $name: eval exit $?"
}
gpu=0
for v in "${variants[@]}"; do
  run_variant "$v" "$gpu,$((gpu + 1))" &
  gpu=$((gpu + 2))
done
wait
tar czf "$OUT/ablation.tgz" --exclude='*.pt' --exclude='checkpoints' -C "$WORK" . && echo "packed $OUT/ablation.tgz"
