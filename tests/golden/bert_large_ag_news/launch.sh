#!/usr/bin/env bash
# Rendered by launcher from <REPO>/recipes/bert_large_ag_news.py; render again rather than edit.
# World: 2 node(s) x 8 process(es) = 16.
# Run it once on each of the 2 nodes, with the same MASTER_ADDR (the address of
# node 0) and this node's NODE_RANK (0 to 1; Slurm's SLURM_NODEID stands in for it):
#   MASTER_ADDR=node0.example NODE_RANK=0 bash <PLAN>/launch.sh
# The same job through accelerate, on each node (export the PET_*, TORCH_* and NCCL_*
# variables below first for the same signal handling):
#   accelerate launch --config_file <PLAN>/accelerate.yaml --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "${MASTER_PORT:-29500}" --rdzv_backend c10d -m launcher.engine <PLAN>/plan.json
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0 (the same on every node)}"
NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-}}"
: "${NODE_RANK:?set NODE_RANK to the index of this node, 0 to 1 (0 on MASTER_ADDR; under Slurm, SLURM_NODEID sets it)}"
# Signals torchrun passes on to every rank (Slurm warns with SIGUSR1), and how long the
# ranks get to save a checkpoint before torchrun kills them (checkpoint.grace_s).
export PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}"
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-120}"
# NCCL: a failed or stuck collective ends the job (after scale.timeout_s) instead of
# hanging it; warnings only. The environment wins (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...).
: "${TORCH_NCCL_ASYNC_ERROR_HANDLING:=1}"; export TORCH_NCCL_ASYNC_ERROR_HANDLING
: "${NCCL_DEBUG:=WARN}"; export NCCL_DEBUG
# torchrun, from the interpreter that has launcher installed
exec "${PYTHON:-python3}" -m torch.distributed.run --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" ${RDZV_ID:+--rdzv-id "$RDZV_ID"} --node-rank "$NODE_RANK" \
  --nnodes 2 --nproc-per-node 8 \
  -m launcher.engine <PLAN>/plan.json
