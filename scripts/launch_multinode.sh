#!/usr/bin/env bash
# Multi-node training with torchrun's c10d rendezvous. Run the same command on every node:
#   NNODES=4 NPROC_PER_NODE=8 RDZV_HOST=node0.cluster RDZV_PORT=29500 RUN_ID=small-fineweb \
#     bash scripts/launch_multinode.sh experiment=small_fineweb
# NNODES          number of nodes (or MIN:MAX for an elastic range)
# NPROC_PER_NODE  processes (GPUs) per node
# RDZV_HOST/PORT  a host all nodes can reach (usually the first node) and a free TCP port on it
# RUN_ID          the same string on every node: it names the rendezvous, so several jobs can share a host
# MAX_RESTARTS    how often torchrun restarts all workers after a failure (each restart resumes from the
#                 newest checkpoint: train.resume=auto)
# Everything after the variables is passed to train.py as Hydra overrides. The run directory must be on a
# filesystem every node sees (checkpoints are written by rank 0 and read by all ranks on resume).
set -euo pipefail
cd "$(dirname "$0")/.."
exec torchrun \
  --nnodes="${NNODES:?set NNODES}" \
  --nproc_per_node="${NPROC_PER_NODE:-8}" \
  --rdzv_backend=c10d \
  --rdzv_endpoint="${RDZV_HOST:?set RDZV_HOST}:${RDZV_PORT:-29500}" \
  --rdzv_id="${RUN_ID:?set RUN_ID}" \
  --max-restarts="${MAX_RESTARTS:-3}" \
  train.py "$@"
