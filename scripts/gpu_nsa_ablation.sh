#!/usr/bin/env bash
# NSA ablations of the gpu-small reproduction (issue 9), side by side on a multi-GPU machine: each job trains
# the reproduction's NSA model (experiment=repro_gpu_small_nsa, retrieval probes with the needle-selection
# diagnostic) for one variant and one seed, with the variant's extra overrides, on two GPUs (torchrun), then runs
# the reproduction's evaluation (the eval overrides of scripts/reproduce.py's gpu-small preset) on the first of
# them. Jobs = VARIANTS x SEEDS, run GPUS/2 at a time (GPUS: the visible GPUs by default).
#   device run (carry .whl): VARIANTS="shared_kv:attention.shared_kv=true window64:attention.window=64" \
#       SEEDS=3 bash scripts/gpu_nsa_ablation.sh
#   VARIANTS="shared_kv:attention.shared_kv=true" SEEDS="0 1" bash scripts/gpu_nsa_ablation.sh   # two seeds at once
# A variant is name:override[;override...]. A job writes $WORK/<name>/{runs,eval,logs}/ and the commands it ran
# (WORK default /tmp/abl), everything packed without checkpoints into $OUT/ablation.tgz. Back here,
# scripts/assemble_ablation.py pairs a variant with the reproduction's full-attention runs of the same seeds and
# builds its report (docs/results/gpu-small-ablations/).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
WORK=${WORK:-/tmp/abl}
SEEDS=${SEEDS:-${SEED:-3}}  # (SEED: the first version's name for a single seed)
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
mapfile -t EVAL < <($PY -c "import sys; sys.path.insert(0, 'scripts'); from reproduce import SCALES
print('\n'.join(SCALES['gpu-small'].eval_overrides))")
read -ra variants <<<"${VARIANTS:?name:override[;override...] per variant}"
run_job() {  # $1 = name:overrides, $2 = seed, $3 = CUDA_VISIBLE_DEVICES
  local name=${1%%:*} sets=${1#*:} seed=$2 dir="$WORK/${1%%:*}"
  local first=${3%%,*}
  mkdir -p "$dir/logs"
  IFS=";" read -ra extra <<<"$sets"
  echo "== $name seed $seed on GPUs $3: ${extra[*]}"
  local train=(python -m torch.distributed.run --standalone --nproc_per_node=2 train.py experiment=repro_gpu_small_nsa
               "run_dir=$dir/runs/nsa-s$seed" "train.seed=$seed" train.val_probe_selection=true "${extra[@]}")
  local eval=(python eval.py "checkpoint=$dir/runs/nsa-s$seed" "out_dir=$dir/eval/nsa-s$seed" "${EVAL[@]}")
  # the commands as run, one per line (scripts/assemble_ablation.py puts them in the report)
  for cmd in train eval; do
    local -n words=$cmd
    $PY -c "import shlex, sys; print(shlex.join(sys.argv[1:]))" "${words[@]}"
  done >"$dir/commands_nsa-s$seed.txt"
  CUDA_VISIBLE_DEVICES=$3 timeout "${TRAIN_TIMEOUT:-420}" $PY "${train[@]:1}" >"$dir/logs/train_nsa-s$seed.log" 2>&1
  echo "   $name seed $seed: train exit $?"
  CUDA_VISIBLE_DEVICES=$first timeout "${EVAL_TIMEOUT:-200}" $PY "${eval[@]:1}" >"$dir/logs/eval_nsa-s$seed.log" 2>&1
  echo "   $name seed $seed: eval exit $?"
}
jobs=()
for v in "${variants[@]}"; do
  for seed in $SEEDS; do jobs+=("$v|$seed"); done
done
slots=$((GPUS / 2))
[ "$slots" -ge 1 ] || { echo "gpu_nsa_ablation.sh: a job needs 2 GPUs, $GPUS visible" >&2; exit 1; }
for ((i = 0; i < ${#jobs[@]}; i += slots)); do  # a wave of up to `slots` jobs side by side
  for ((k = 0; k < slots && i + k < ${#jobs[@]}; k++)); do
    job=${jobs[i + k]}
    run_job "${job%|*}" "${job##*|}" "$((2 * k)),$((2 * k + 1))" &
  done
  wait
done
tar czf "$OUT/ablation.tgz" --exclude='*.pt' --exclude='checkpoints' -C "$WORK" . && echo "packed $OUT/ablation.tgz"
