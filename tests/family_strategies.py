"""Run under torchrun by tests/test_family_strategies.py: every plan dir given trains in turn
through the engine's own Trainer (build_model, build_accelerator, prepare, 2 steps, the last
step's checkpoint, the export), in one process group.

Between cells accelerate's singletons and transformers' ZeRO-3 flag are reset (the process
group stays: accelerate and DeepSpeed reuse an initialised one). Rank 0 writes
RUN_DIR/cell.json with what was built: the distributed type accelerate set up and the ZeRO
stage.

On CPU accelerate turns an FSDP plugin into plain DDP (Accelerator(cpu=True) sets MULTI_CPU,
and only GPU types become FSDP), so for fsdp cells this harness also shards the recipe's model
itself the way accelerate's transformer_based_wrap does (fully_shard on every module of the
family's block class, then the root) and trains one step on both ranks: `fsdp_units` are the
classes of the FSDP units made, `sharded` whether every block weight holds half its rows here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(plan_dirs: list[str]) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import torch.distributed as dist
    import transformers
    from accelerate.state import AcceleratorState, GradientState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from launcher.engine.trainer import Trainer
    from launcher.plan.build import Plan

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    for plan_dir in map(Path, plan_dirs):
        plan = Plan.from_json((plan_dir / "plan.json").read_text())
        trainer = Trainer(plan, plan_dir)
        try:
            summary = trainer.train()
            cell = {"distributed_type": trainer.accelerator.distributed_type.name,
                    "world": trainer.world, "steps": summary["steps"],
                    "final_loss": summary["final_loss"]}
            ds = trainer.accelerator.state.deepspeed_plugin
            if ds is not None:
                cell["zero_stage"] = ds.zero_stage
            if plan.recipe.scale.strategy == "fsdp":
                cell.update(fsdp_step(plan, trainer))
            if trainer.is_main:
                (Path(plan.run_dir) / "cell.json").write_text(json.dumps(cell))
        finally:
            trainer.close()
            AcceleratorState._reset_state(True)
            GradientState._reset_state()
            unset_hf_deepspeed_config()
        dist.barrier()
    dist.destroy_process_group()
    return 0


def fsdp_step(plan, trainer) -> dict:
    import torch
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from torch.distributed.tensor import DTensor

    from launcher.engine.model import build_model, fsdp_block

    torch.manual_seed(0)
    model = build_model(plan.recipe.model, trainer.task)
    block = fsdp_block(plan.recipe.model)
    blocks = [m for m in model.modules() if type(m).__name__ == block]
    for module in blocks:
        fully_shard(module)
    fully_shard(model)
    rows = [json.loads(line) for line in
            Path(plan.recipe.data.train).read_text().splitlines()[:8]]
    batch = trainer.task.encode(rows, trainer.tokenizer, indices=range(8))["inputs"]
    labels = batch.pop("labels")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = (trainer.task.loss_sum(model(**batch), labels, None)
            / trainer.task.units(labels, None).float())
    loss.backward()
    optimizer.step()
    weights = [p for m in blocks for p in m.parameters() if p.dim() == 2]
    return {"fsdp_units": [type(m).__name__.removeprefix("FSDP") for m in model.modules()
                           if isinstance(m, FSDPModule)],
            "sharded": all(isinstance(p, DTensor) and p.to_local().shape[0] * 2 == p.shape[0]
                           for p in weights),
            "fsdp_loss": loss.item()}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
