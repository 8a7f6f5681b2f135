"""The plan's device, checked on the node before anything is built.

A cuda plan on a node without CUDA (or with fewer GPUs than this node's ranks) must stop with
one line naming the node, what it sees and what the plan expected: never train on CPU, where a
BERT-large job would run for days without saying why.
"""

from __future__ import annotations

import os
import socket
from typing import Optional

from launcher.plan.build import Plan


class DeviceUnavailable(Exception):
    """The node cannot give the plan what it was made for; the message is one line."""


def cuda_count() -> int:
    """The CUDA devices torch can use in this process (CUDA_VISIBLE_DEVICES applied): the one
    count the engine, the local executor and `launcher eval` go by."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def visible_setting() -> str:
    return f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}"


def refuse_here(plan: Plan, procs: int) -> None:
    """Before `procs` processes of a cuda plan start on this machine (`launcher run` on the
    local executor, `launcher eval`): what the engine would refuse on every rank, as one
    line naming scale.device."""
    if plan.device != "cuda":
        return
    have = cuda_count()
    if have < procs:
        from launcher.errors import RecipeError

        raise RecipeError("scale.device", f"is cuda ({plan.sources.get('scale.device')}) but "
                          f"this machine has {have} CUDA device(s) for {procs} process(es) "
                          f"({visible_setting()})",
                          "set scale.device=cpu, or run on a machine with the GPUs")


def check(plan: Plan, local: Optional[int] = None) -> None:
    """`local`: the ranks on this node (default: torchrun's LOCAL_WORLD_SIZE, else the plan's)."""
    if plan.device != "cuda":
        return
    import torch

    if local is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", plan.procs_per_node))
    count = cuda_count()
    if count >= local:
        return
    slurm = os.environ.get("SLURMD_NODENAME")
    node = socket.gethostname() + (f" (Slurm node {slurm}, job {os.environ.get('SLURM_JOB_ID')})"
                                   if slurm else "")
    sees = f"{count} CUDA device(s)" if count else "no CUDA device"
    given = os.environ.get("SLURM_GPUS_ON_NODE")
    raise DeviceUnavailable(
        f"{node}: the plan trains on cuda ({_why(plan)}) with {local} rank(s) on this node, one "
        f"GPU each, but torch sees {sees} ({visible_setting()}"
        + (f", SLURM_GPUS_ON_NODE={given}" if given is not None else "")
        + f"; torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}). "
        "Fix: run on GPU nodes with a CUDA build of torch, or set scale.device=cpu")


def _why(plan: Plan) -> str:
    source = plan.sources.get("scale.device", "")
    return (f"scale.device=auto: {source.split(': ', 1)[1]}" if source.startswith("derived: ")
            else f"scale.device={plan.recipe.scale.device}")
