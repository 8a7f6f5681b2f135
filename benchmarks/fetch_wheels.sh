#!/usr/bin/env bash
# The Python packages the GPU machine lacks, as wheels in .whl/ (run where PyPI is reachable;
# .whl/ is git-ignored and travels with `carry`). deepspeed is built without its CUDA ops
# (DS_BUILD_OPS=0): it compiles the few it needs on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hjson==3.1.0 pydantic==2.14.3 \
  pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 submitit==1.5.4
ls .whl
