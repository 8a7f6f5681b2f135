"""Plan -> the files a launch needs. Pure functions from a Plan to text.

`launch.sh` runs torchrun (the same line locally and, later, under Slurm); the engine reads
plan.json and nothing else. `accelerate.yaml` is the same job for `accelerate launch`, and
`deepspeed.json` is what both hand DeepSpeed: one recipe is the only source of every value.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Optional

import yaml

from launcher import families
from launcher.plan.build import Plan

ZERO_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3, "zero3_offload": 3}
DEFAULT_PORT = 29500


def deepspeed_config(plan: Plan) -> Optional[dict[str, Any]]:
    strategy = plan.recipe.scale.strategy
    if strategy not in ZERO_STAGES:
        return None
    precision = plan.recipe.scale.precision
    zero: dict[str, Any] = {
        "stage": ZERO_STAGES[strategy],
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e8,
    }
    if ZERO_STAGES[strategy] == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True})
    if strategy == "zero3_offload":
        zero.update({"offload_optimizer": {"device": "cpu", "pin_memory": True},
                     "offload_param": {"device": "cpu", "pin_memory": True}})
    return {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.grad_accum,
        "gradient_clipping": plan.recipe.optim.max_grad_norm,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "steps_per_print": plan.total_steps + 1,
        "wall_clock_breakdown": False,
    }


def accelerate_config(plan: Plan, plan_dir: Path) -> dict[str, Any]:
    strategy = plan.recipe.scale.strategy
    precision = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[plan.recipe.scale.precision]
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if plan.world_size > 1 else "NO",
        "num_machines": plan.nodes,
        "num_processes": plan.world_size,
        "machine_rank": 0,
        "mixed_precision": precision,
        "gpu_ids": "all",
        "use_cpu": False,
        "same_network": True,
        "rdzv_backend": "static" if plan.nodes == 1 else "c10d",
        "main_training_function": "main",
        "downcast_bf16": "no",
        "debug": False,
    }
    if plan.nodes > 1:
        config.update({"main_process_ip": "127.0.0.1", "main_process_port": DEFAULT_PORT})
    if strategy in ZERO_STAGES:
        # With a DeepSpeed file, accelerate takes precision and batch sizes from the file.
        config.update({
            "distributed_type": "DEEPSPEED",
            "deepspeed_config": {
                "deepspeed_config_file": str(plan_dir / "deepspeed.json"),
                "deepspeed_multinode_launcher": "standard",
                # The engine builds the whole model, then ZeRO-3 shards it: the same initial
                # weights as every other strategy (encoder models fit in host memory).
                "zero3_init_flag": False,
            },
        })
        del config["mixed_precision"]
    elif strategy == "fsdp":
        config.update({
            "distributed_type": "FSDP",
            "fsdp_config": {
                "fsdp_version": 2,
                "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "fsdp_transformer_layer_cls_to_wrap": _fsdp_block(plan),
                "fsdp_reshard_after_forward": True,
                "fsdp_state_dict_type": "SHARDED_STATE_DICT",
                "fsdp_cpu_ram_efficient_loading": True,
                "fsdp_offload_params": False,
            },
        })
    return config


def _fsdp_block(plan: Plan) -> str:
    # The model family's block (launcher/families.py); BERT's when the config cannot be read
    # before launch (a hub model not in the cache): the engine wraps what the model has.
    config = families.read_config(plan.recipe.model.name) or {}
    return families.block_class(config.get("model_type", "bert"))


def launch_script(plan: Plan, plan_dir: Path) -> str:
    plan_json = shlex.quote(str(plan_dir / "plan.json"))
    if plan.nodes == 1:
        rendezvous = "--standalone"
    else:
        # One agent per node meets the others at the first node of the allocation; the
        # executor (or the user) sets MASTER_ADDR / MASTER_PORT / RDZV_ID for the job.
        rendezvous = ('--rdzv-backend c10d '
                      f'--rdzv-endpoint "${{MASTER_ADDR:-127.0.0.1}}:${{MASTER_PORT:-{DEFAULT_PORT}}}" '
                      f'--rdzv-id "${{RDZV_ID:-{shlex.quote(plan.name)}}}"')
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# Rendered by launcher from {plan.recipe_path}; render again rather than edit.",
        f"# World: {plan.nodes} node(s) x {plan.procs_per_node} process(es) = {plan.world_size}.",
        "# The same job through accelerate:",
        f"#   accelerate launch --config_file {shlex.quote(str(plan_dir / 'accelerate.yaml'))} "
        f"-m launcher.engine {plan_json}",
        "set -euo pipefail",
        "# Signals torchrun passes on to every rank (Slurm warns with SIGUSR1), and how long the",
        "# ranks get to save a checkpoint before torchrun kills them (checkpoint.grace_s).",
        'export PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}"',
        f'export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${{TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-{plan.recipe.checkpoint.grace_s}}}"',
        '# torchrun, from the interpreter that has launcher installed',
        f'exec "${{PYTHON:-python3}}" -m torch.distributed.run {rendezvous} \\',
        f"  --nnodes {plan.nodes} --nproc-per-node {plan.procs_per_node} \\",
        f"  -m launcher.engine {plan_json}",
        "",
    ])


def render(plan: Plan, plan_dir: Path) -> dict[str, str]:
    """File name -> content, for every file of the plan."""
    files = {
        "plan.json": plan.to_json(),
        "accelerate.yaml": yaml.safe_dump(accelerate_config(plan, plan_dir), sort_keys=False),
        "launch.sh": launch_script(plan, plan_dir),
    }
    ds = deepspeed_config(plan)
    if ds is not None:
        files["deepspeed.json"] = json.dumps(ds, indent=2) + "\n"
    return files


def write(plan: Plan, plan_dir: Path) -> list[Path]:
    plan_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(plan, plan_dir).items():
        path = plan_dir / name
        path.write_text(text)
        if name == "launch.sh":
            path.chmod(0o755)
        written.append(path)
    return written
