#!/usr/bin/env bash
# Rendered by launcher from <REPO>/recipes/tiny_news.py; render again rather than edit.
# World: 1 node(s) x 2 process(es) = 2.
# The same job through accelerate:
#   accelerate launch --config_file <PLAN>/accelerate.yaml -m launcher.engine <PLAN>/plan.json
set -euo pipefail
# Signals torchrun passes on to every rank (Slurm warns with SIGUSR1), and how long the
# ranks get to save a checkpoint before torchrun kills them (checkpoint.grace_s).
export PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}"
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-120}"
# NCCL: a failed or stuck collective ends the job (after scale.timeout_s) instead of
# hanging it; warnings only. The environment wins (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...).
: "${TORCH_NCCL_ASYNC_ERROR_HANDLING:=1}"; export TORCH_NCCL_ASYNC_ERROR_HANDLING
: "${NCCL_DEBUG:=WARN}"; export NCCL_DEBUG
# torchrun, from the interpreter that has launcher installed
exec "${PYTHON:-python3}" -m torch.distributed.run --standalone \
  --nnodes 1 --nproc-per-node 2 \
  -m launcher.engine <PLAN>/plan.json
