"""Run under torchrun (gloo, CPU): DeepSpeed's own DeepSpeedConfig must accept rendered files.

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/ds_config_check.py MANIFEST.json RESULT_DIR

MANIFEST is a list of {"path", "world_size", "train_batch_size", "micro", "accum", "stage",
"precision", "offload"}; each rank writes RESULT_DIR/rank{R}.json with what it checked.
DeepSpeedConfig reads the world size from the process group (falling back to 1 when there is
none), so a plan for this group's size is checked as is; a plan for a bigger world is checked
through an `mpu` that reports the plan's data-parallel size, as Megatron-style callers do.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from pathlib import Path

import deepspeed
import torch.distributed as dist
from deepspeed.runtime.config import DeepSpeedConfig


class PlanWorld:
    """The part of an mpu DeepSpeedConfig asks for: the data-parallel world size."""

    def __init__(self, size: int):
        self.size = size

    def get_data_parallel_world_size(self) -> int:
        return self.size


def check(case: dict, group_size: int) -> list[str]:
    mpu = None if case["world_size"] == group_size else PlanWorld(case["world_size"])
    cfg = DeepSpeedConfig(case["path"], mpu=mpu)
    offload = cfg.zero_config.offload_optimizer
    got = {
        "world_size": int(cfg.world_size),
        "train_batch_size": cfg.train_batch_size,
        "micro": cfg.train_micro_batch_size_per_gpu,
        "accum": cfg.gradient_accumulation_steps,
        "stage": int(cfg.zero_optimization_stage),
        "precision": ("bf16" if cfg.bfloat16_config.enabled else
                      "fp16" if cfg.float16_config.enabled else "fp32"),
        "offload": (offload is not None
                    and str(getattr(offload.device, "value", offload.device)) == "cpu"),
    }
    return [f"{key}: deepspeed says {got[key]!r}, plan says {case[key]!r}"
            for key in got if got[key] != case[key]]


def main(manifest: str, result_dir: str) -> int:
    # On the CPU accelerator DeepSpeed JIT-compiles a shared-memory allreduce kernel when its
    # comm backend starts (~45 s on a cold cache); reading a config needs no collectives.
    # (`import deepspeed.comm.torch as m` would give torch itself: deepspeed.comm has a `torch`.)
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    if hasattr(ds_comm_torch, "build_shm_op"):
        ds_comm_torch.build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo")
    rank, group_size = dist.get_rank(), dist.get_world_size()
    cases = json.loads(Path(manifest).read_text())
    report = {"rank": rank, "group_size": group_size, "checked": [], "failures": {}}
    for case in cases:
        try:
            problems = check(case, group_size)
        except Exception:  # DeepSpeed rejecting the file is the failure we look for
            problems = [traceback.format_exc(limit=3)]
        report["checked"].append(case["path"])
        if problems:
            report["failures"][case["path"]] = problems
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(report, indent=2))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
