#!/usr/bin/env bash
# Interleaved A/B of kernel tile variants in long-context NSA training (issue 8's NSA / full ratio), with full
# attention's baseline timed in the same call. Results: $OUT/ab/ (one JSON per run, ab.txt: the table) and
# $OUT/train_full_t$T.json.
#   device run (carry .whl): VARIANTS="default 'both={...}'" RUNS=2 bash scripts/gpu_ab_train.sh
# VARIANTS: ab_tiles.py --variant values, as a bash word list (default: the shipped tiles alone, i.e. the NSA /
# full pair at T; the twenty-second and twenty-third sessions' A/Bs, wdot + fused_delta, interior and key_major (the
# last two since removed), are in docs/benchmarks.md); T: sequence length (65536); RUNS: rounds (2); FULL=0 skips
# the full-attention baseline; OVERRIDES: more Hydra overrides for NSA and full attention alike (e.g.
# model.residual_dtype=compute).
# Same model and settings as the seventeenth session's pair.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
T=${T:-65536}
VARIANTS=${VARIANTS:-default}
MODEL_ARGS=(model=small_gqa16 "model.max_seq_len=$T" "train.batch_tokens=$((4 * T))" train.micro_batch_size=1
            train.activation_checkpointing=false train.compile=true train.compile_mode=reduce-overhead)
read -ra extra <<< "${OVERRIDES:-}"
MODEL_ARGS+=("${extra[@]}")
STEP_ARGS=(--steps 2 --warmup 3 --breakdown-steps 0)
eval "variant_args=(); for v in $VARIANTS; do variant_args+=(--variant \"\$v\"); done"
python3 scripts/ab_tiles.py --bench train --runs "${RUNS:-2}" --out-dir "$OUT/ab" "${variant_args[@]}" -- \
  "${STEP_ARGS[@]}" -- attention=nsa "${MODEL_ARGS[@]}" 2>&1 | grep -v -e '%|' -e Warning | tail -30
if [ "${FULL:-1}" = 1 ]; then
  echo "== full attention, T=$T"
  python3 scripts/bench_train.py --out "$OUT/train_full_t$T.json" "${STEP_ARGS[@]}" -- attention=full \
    "${MODEL_ARGS[@]}" 2>&1 | grep -v -e '%|' -e Warning | tail -4
fi
