#!/usr/bin/env bash
# The whole GPU measurement of BERT-large (335M) on AG-News-like lengths, one command per part:
#   benchmarks/gpu.sh throughput [OUT]   ours (ddp, padded and packed) beside HF Trainer (best
#                                        settings and as the tutorials write it), at the
#                                        recipe's micro batch of 32 and at 256
#   benchmarks/gpu.sh strategies [OUT]   ddp, zero2, zero3 and fsdp at 32, bf16, one GPU
#   benchmarks/gpu.sh all [OUT]          both
# Each part writes OUT/<part>/ (REPORT.md, report.json, three PNGs; default OUT is
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

report() {  # keep the report, leave the per-run folders in $work
  mkdir -p "$OUT/$1"
  cp "$work/$1"/{REPORT.md,report.json,throughput.png,step_times.png,memory.png} "$OUT/$1/"
}
if [ "$part" = throughput ] || [ "$part" = all ]; then
  python3 -m launcher bench "$recipe" --synthetic --batch 32,256 --steps 50 --warmup 10 \
    --strategies ddp --packing both --baseline hf-trainer --baseline hf-trainer-tutorial \
    --out "$work/throughput" || true
  report throughput
fi
if [ "$part" = strategies ] || [ "$part" = all ]; then
  python3 -m launcher bench "$recipe" --synthetic --strategies ddp,zero2,zero3,fsdp --batch 32 \
    --steps 30 --warmup 10 --out "$work/strategies" || true
  report strategies
fi
echo "reports in $OUT"
