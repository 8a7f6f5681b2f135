"""Several runs trained one after the other in one process group, under torchrun
(together.in_turn; tests/test_family_strategies.py starts it itself): every plan dir given
trains in turn through the engine's own Trainer (build_model, build_accelerator, prepare, the
plan's steps, the last step's checkpoint, the export). One start-up (torch, transformers,
the process group) for all of them instead of a launch each.

Between cells accelerate's singletons and transformers' ZeRO-3 flag are reset (the process
group stays: accelerate and DeepSpeed reuse an initialised one). Rank 0 writes
RUN_DIR/cell.json with what was built: the distributed type accelerate set up and the ZeRO
stage.

For fsdp cells it also records what the engine's FSDP2 (accelerate's, on gloo) made of the
model: `fsdp_units` are the classes of the FSDP units, `sharded` whether every block weight
holds its rank's rows only here (a DTensor with half the rows on each of the 2 ranks).

A plan's faults (plan.faults, engine/faults.py) are its step hooks, as engine/main.py hands
them over, so a cell may be stopped by a real signal and save; `result` in cell.json is what
Trainer.train returned ({"preempted": true, "step": N} for a stopped cell), `mlflow` and
`deepspeed_imported` whether this process has imported them by then. Each cell's
`launcher` log lines go to its own RUN_DIR/logs/rank{R}.log, as in a launch. Rank 0 prints
`CELL RUN_DIR` before each cell's own output (together.cell_outputs splits them).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

CELL = "CELL"


def main(plan_dirs: list[str]) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import torch.distributed as dist
    import transformers
    from accelerate.state import AcceleratorState, GradientState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from launcher.engine.main import step_hooks
    from launcher.engine.trainer import Trainer
    from launcher.plan.build import Plan
    from launcher.run_dir import RunDir

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    rank = int(os.environ["RANK"])  # torchrun's
    engine_log = logging.getLogger("launcher")
    engine_log.setLevel(logging.INFO)
    for plan_dir in map(Path, plan_dirs):
        plan = Plan.from_json((plan_dir / "plan.json").read_text())
        if rank == 0:
            print(f"{CELL} {plan.run_dir}", flush=True)
        rd = RunDir(plan.run_dir)
        rd.logs.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(rd.rank_log(rank))
        handler.setFormatter(logging.Formatter(f"%(asctime)s rank{rank} %(levelname)s "
                                               "%(message)s"))
        engine_log.addHandler(handler)
        trainer = Trainer(plan, plan_dir, hooks=step_hooks(plan, rank))
        try:
            summary = trainer.train()
            cell = {"distributed_type": trainer.accelerator.distributed_type.name,
                    "world": trainer.world, "steps": summary.get("steps"),
                    "final_loss": summary.get("final_loss"), "result": summary,
                    # DeepSpeed's import must neither import mlflow nor leave it unimportable
                    "mlflow": {None: "blocked", 0: "not imported"}.get(
                        sys.modules.get("mlflow", 0), "imported"),
                    "deepspeed_imported": "deepspeed" in sys.modules}
            ds = trainer.accelerator.state.deepspeed_plugin
            if ds is not None:
                cell["zero_stage"] = ds.zero_stage
            if plan.recipe.scale.strategy == "fsdp":
                cell.update(fsdp_step(plan, trainer))
            if trainer.is_main:
                (Path(plan.run_dir) / "cell.json").write_text(json.dumps(cell))
        finally:
            trainer.close()
            engine_log.removeHandler(handler)
            handler.close()
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
            unset_hf_deepspeed_config()
        dist.barrier()
    dist.destroy_process_group()
    return 0


def fsdp_step(plan, trainer) -> dict:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from launcher.engine.model import fsdp_block

    model = trainer.accelerator.unwrap_model(trainer.model)
    block = fsdp_block(plan.recipe.model)
    blocks = [m for m in model.modules() if type(m).__name__.removeprefix("FSDP") == block]
    weights = [p for m in blocks for p in m.parameters() if p.dim() == 2]
    return {"fsdp_units": [type(m).__name__.removeprefix("FSDP") for m in model.modules()
                           if isinstance(m, FSDPModule)],
            "sharded": bool(weights) and all(
                isinstance(p, DTensor) and p.to_local().shape[0] * 2 == p.shape[0]
                for p in weights)}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
