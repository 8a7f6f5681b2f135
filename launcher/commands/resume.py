"""`launcher resume RUN_DIR`: go on from the run's last complete checkpoint, under its own plan
(on another world size or executor if asked)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from rich.console import Console

from launcher.commands.launch import launch
from launcher.errors import RecipeError
from launcher.plan.build import Plan, build
from launcher.recipe.load import LoadedRecipe
from launcher.run_dir import open_run


def main(args, console: Console) -> int:
    plan = resume_plan(args.run_dir, args.nodes, args.procs_per_node, args.executor)
    return launch(plan, console, dry_run=args.dry_run, must_resume=True)


def resume_plan(run_dir: str, nodes: Optional[int], procs_per_node: Optional[int],
                executor: Optional[str] = None) -> Plan:
    """The run's own plan, on a new world size if asked: the global batch is kept and the
    accumulation derived again."""
    rd, old = open_run(run_dir)
    if "shuffle" not in json.loads((rd.plan / "plan.json").read_text())["recipe"].get("data", {}):
        # Written by a launcher from before data.shuffle, which read every epoch in file
        # order: the run goes on in that order (checkpoint.compat.check says so).
        old = dataclasses.replace(old, recipe=dataclasses.replace(
            old.recipe, data=dataclasses.replace(old.recipe.data, shuffle=False)))
    scale = old.recipe.scale
    nodes = nodes or scale.nodes
    procs = procs_per_node or scale.procs_per_node
    if (nodes, procs) == (scale.nodes, scale.procs_per_node):
        new_scale = scale
    elif scale.tokens_per_step:
        # A token budget's steps do not depend on the world size (engine/budget.py).
        new_scale = dataclasses.replace(scale, nodes=nodes, procs_per_node=procs)
    else:
        new_scale = dataclasses.replace(scale, nodes=nodes, procs_per_node=procs,
                                        global_batch=old.global_batch, grad_accum=None)
        per_step = nodes * procs * scale.micro_batch
        if old.global_batch % per_step:
            fits = [w for w in range(1, old.global_batch // scale.micro_batch + 1)
                    if (old.global_batch // scale.micro_batch) % w == 0]
            raise RecipeError("--nproc-per-node", f"{nodes} x {procs} processes with micro batch "
                              f"{scale.micro_batch} cannot make the run's global batch of "
                              f"{old.global_batch}", f"resume on a world size among {fits}")
    recipe = dataclasses.replace(old.recipe, scale=new_scale)
    if executor is not None:
        recipe = dataclasses.replace(recipe, run=dataclasses.replace(recipe.run, executor=executor))
    sources = dict(old.sources)
    loaded = LoadedRecipe(recipe=recipe, path=Path(old.recipe_path), sources=sources)
    return build(loaded, run_dir=str(rd.root))
