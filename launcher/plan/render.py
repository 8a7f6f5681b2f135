"""Plan -> the files a launch needs. Pure functions from a Plan to text.

`launch.sh` runs torchrun (the same line locally and, later, under Slurm); the engine reads
plan.json and nothing else. `accelerate.yaml` is the same job for `accelerate launch`, and
`deepspeed.json` is what both hand DeepSpeed: one recipe is the only source of every value.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Optional

import yaml

from launcher import families
from launcher.plan.build import Plan

ZERO_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3, "zero3_offload": 3}
# accelerate's mixed_precision for each scale.precision (accelerate.yaml and the engine's
# Accelerator both take it from here)
MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}
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
    precision = MIXED_PRECISION[plan.recipe.scale.precision]
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
        # No machine_rank or main_process_ip: they differ per node, and a value here would be
        # taken on every node (node 1 starting a rendezvous of its own on 127.0.0.1). Each node
        # passes its own on the command line (accelerate_command).
        del config["machine_rank"]
        config["main_process_port"] = DEFAULT_PORT
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


def accelerate_command(plan: Plan, plan_dir: Path) -> str:
    """The job through `accelerate launch`, as a shell command to run on every node."""
    config = shlex.quote(str(plan_dir / "accelerate.yaml"))
    engine = f"-m launcher.engine {shlex.quote(str(plan_dir / 'plan.json'))}"
    if plan.nodes == 1:
        return f"accelerate launch --config_file {config} {engine}"
    # accelerate 1.x takes rdzv_backend from its own CLI default (static), never from the
    # config file: c10d must be on the command line, like each node's rank and the address.
    return (f'accelerate launch --config_file {config} --machine_rank "$NODE_RANK" '
            f'--main_process_ip "$MASTER_ADDR" '
            f'--main_process_port "${{MASTER_PORT:-{DEFAULT_PORT}}}" --rdzv_backend c10d {engine}')


def _fsdp_block(plan: Plan) -> str:
    # The model family's block (launcher/families.py); BERT's when the config cannot be read
    # before launch (a hub model not in the cache): the engine wraps what the model has.
    config = families.read_config(plan.recipe.model.name) or {}
    return families.block_class(config.get("model_type", "bert"))


def launch_script(plan: Plan, plan_dir: Path) -> str:
    plan_json = shlex.quote(str(plan_dir / "plan.json"))
    header = [
        "#!/usr/bin/env bash",
        f"# Rendered by launcher from {_comment(plan.recipe_path)}; render again rather than edit.",
        f"# World: {plan.nodes} node(s) x {plan.procs_per_node} process(es) = {plan.world_size}.",
    ]
    if plan.nodes == 1:
        rendezvous = "--standalone"
        header += ["# The same job through accelerate:",
                   f"#   {_comment(accelerate_command(plan, plan_dir))}"]
        checks = []
    else:
        # One agent per node meets the others at the first node (c10d rendezvous on
        # MASTER_ADDR:MASTER_PORT). Under Slurm, launcher's job sets MASTER_ADDR, MASTER_PORT
        # and RDZV_ID, and Slurm sets SLURM_NODEID; by hand, set MASTER_ADDR and NODE_RANK.
        rendezvous = ('--rdzv-backend c10d '
                      f'--rdzv-endpoint "$MASTER_ADDR:${{MASTER_PORT:-{DEFAULT_PORT}}}" '
                      '${RDZV_ID:+--rdzv-id "$RDZV_ID"} --node-rank "$NODE_RANK"')
        last = plan.nodes - 1
        script = shlex.quote(str(plan_dir / "launch.sh"))
        header += [
            f"# Run it once on each of the {plan.nodes} nodes, with the same MASTER_ADDR (the "
            "address of",
            f"# node 0) and this node's NODE_RANK (0 to {last}; Slurm's SLURM_NODEID stands in "
            "for it):",
            f"#   MASTER_ADDR=node0.example NODE_RANK=0 bash {_comment(script)}",
            "# The same job through accelerate, on each node (export the PET_*, TORCH_* and NCCL_*",
            "# variables below first for the same signal handling):",
            f"#   {_comment(accelerate_command(plan, plan_dir))}",
        ]
        checks = [
            ': "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0 (the same on every node)}"',
            'NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-}}"',
            f': "${{NODE_RANK:?set NODE_RANK to the index of this node, 0 to {last} '
            '(0 on MASTER_ADDR; under Slurm, SLURM_NODEID sets it)}"',
        ]
    timeout = plan.recipe.checkpoint.grace_s
    return "\n".join([
        *header,
        "set -euo pipefail",
        *checks,
        "# Signals torchrun passes on to every rank (Slurm warns with SIGUSR1), and how long the",
        "# ranks get to save a checkpoint before torchrun kills them (checkpoint.grace_s).",
        'export PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}"',
        f'export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${{TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-{timeout}}}"',
        "# NCCL: a failed or stuck collective ends the job (after scale.timeout_s) instead of",
        "# hanging it; warnings only. The environment wins (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...).",
        ': "${TORCH_NCCL_ASYNC_ERROR_HANDLING:=1}"; export TORCH_NCCL_ASYNC_ERROR_HANDLING',
        ': "${NCCL_DEBUG:=WARN}"; export NCCL_DEBUG',
        '# torchrun, from the interpreter that has launcher installed',
        f'exec "${{PYTHON:-python3}}" -m torch.distributed.run {rendezvous} \\',
        f"  --nnodes {plan.nodes} --nproc-per-node {plan.procs_per_node} \\",
        f"  -m launcher.engine {plan_json}",
        "",
    ])


def _comment(text: str) -> str:
    """Text for a comment line: a newline in a path must not end the comment."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)


def private(plan: Plan) -> bool:
    """plan.json and sbatch.sh hold slurm.env's values: only their owner may read them."""
    return bool(plan.recipe.slurm.env)


def write_file(path: Path, text: str, *, private: bool = False) -> None:
    """Write `text`; mode 0600 from the moment the file exists when `private`."""
    if not private:
        path.write_text(text)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


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
        write_file(path, text, private=private(plan) and name == "plan.json")
        if name == "launch.sh":
            path.chmod(0o755)
        written.append(path)
    return written
