#!/usr/bin/env bash
# Rendered by launcher from <REPO>/recipes/tiny_news.py; render again rather than edit.
# World: 1 node(s) x 2 process(es) = 2.
# The same job through accelerate:
#   accelerate launch --config_file <PLAN>/accelerate.yaml -m launcher.engine <PLAN>/plan.json
set -euo pipefail
RUN_NAME=tiny_news
# Signals torchrun passes on to every rank (Slurm warns with SIGUSR1), and how long the
# ranks get to save a checkpoint before torchrun kills them (checkpoint.grace_s).
export PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}"
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-120}"
# torchrun, from the interpreter that has launcher installed
exec "${PYTHON:-python3}" -m torch.distributed.run --standalone \
  --nnodes 1 --nproc-per-node 2 \
  -m launcher.engine <PLAN>/plan.json
