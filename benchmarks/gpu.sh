#!/usr/bin/env bash
# The whole GPU measurement of BERT-large (335M) on AG-News-like lengths, bf16, one GPU.
#   benchmarks/gpu.sh batch32 [OUT]     at the recipe's 32 examples per step: ours padded and
#                                       packed, eager and compiled (CUDA graphs), beside HF
#                                       Trainer with its best settings and as tutorials write it
#   benchmarks/gpu.sh batch256 [OUT]    the same at 256 examples per step (throughput mode:
#                                       packed 256 x ~52 tokens is ~13k real tokens a step)
#   benchmarks/gpu.sh strategies [OUT]  ddp, zero2, zero3 and fsdp at 32: samples/s, peak memory
#   benchmarks/gpu.sh all [OUT]         the three, one after another
# Each part writes OUT/<part>/ (REPORT.md, report.json, three PNGs; OUT defaults to
# benchmarks/results/<device>-<date>). Inputs are synthetic (random weights, generated rows):
# the GPU machine reaches no hub. Packages it lacks come from .whl/ (benchmarks/fetch_wheels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:-all}
if ! python3 -c "import deepspeed, datasets" 2>/dev/null; then
  [ -d .whl ] || { echo "deepspeed/datasets missing and no .whl/: run benchmarks/fetch_wheels.sh" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # launcher from this checkout
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
device=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace('NVIDIA ', '').replace(' ', '-'))")
OUT=${2:-benchmarks/results/$device-$(date +%F)}
recipe=recipes/bert_large_ag_news.py
work=${BENCH_WORK:-/tmp/bench}

bench() {  # PART ARGS...: run, then keep the report (the per-run folders stay in $work)
  local name=$1; shift
  python3 -m launcher bench "$recipe" --synthetic --out "$work/$name" "$@" || true
  mkdir -p "$OUT/$name"
  cp "$work/$name"/{REPORT.md,report.json,throughput.png,step_times.png,memory.png} "$OUT/$name/"
}
baselines=(--baseline hf-trainer --baseline hf-trainer-tutorial)
case $part in batch32|all)
  bench batch32 --batch 32 --strategies ddp --packing both --compile off,reduce-overhead \
    --steps 50 --warmup 10 "${baselines[@]}" ;; esac
case $part in batch256|all)
  bench batch256 --batch 256 --strategies ddp --packing both --compile off,default \
    --steps 30 --warmup 5 "${baselines[@]}" ;; esac
case $part in strategies|all)
  bench strategies --batch 32 --strategies ddp,zero2,zero3,fsdp --steps 30 --warmup 10 ;; esac
echo "reports in $OUT"
