"""Going on with a run: what `run` into an existing run directory and `resume RUN_DIR` check
before anything is launched (no torch, no hashing: the engine verifies the checkpoint itself
and falls back to an older one when a file is damaged). A checkpoint holding something that
could run code when loaded is skipped here already, with a warning."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from launcher import checkpoints, tasks
from launcher.errors import RecipeError
from launcher.plan.build import Plan, build
from launcher.recipe.load import LoadedRecipe
from launcher.run_dir import RunDir

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on a signal with a checkpoint saved; run it again


def finished(rd: RunDir) -> bool:
    return rd.summary.is_file() and rd.final.is_dir()


def check(plan: Plan) -> Optional[int]:
    """The step a launch of `plan` will continue from (None: a fresh run); a recipe that
    does not fit the run directory's checkpoint is refused here, before launching."""
    rd = RunDir(plan.run_dir)
    if finished(rd):
        raise RecipeError("run.output_dir", f"{rd.root} holds a finished run (summary.json "
                          "and final/)", "choose a new run.output_dir, or use `launcher eval` "
                          "on it; nothing there was touched")
    choice = checkpoints.loadable(rd)
    for warning in choice.warnings:
        _warn(f"{warning}; falling back to an older checkpoint" if choice.path else warning)
    if choice.path is None and choice.warnings:
        raise RecipeError("RUN_DIR", f"no checkpoint in {rd.checkpoints} is safe to load",
                          "start over in a new run.output_dir (or restore the run's "
                          "checkpoints from a copy you trust); nothing there was touched")
    latest = choice.path
    if latest is None or not (latest / checkpoints.STATE).is_file():
        return None
    state = checkpoints.read_state(latest)
    now = checkpoints.fingerprint(plan.recipe, tasks.for_recipe(plan.recipe).labels)
    problems = checkpoints.incompatible(state, now, plan.global_batch)
    at = state.get("position", {})
    if "data_order" not in state and (at.get("row") or at.get("examples")):
        if plan.recipe.data.shuffle:
            raise RecipeError("data.shuffle", f"{latest} was written before checkpoints "
                              "recorded their data order, by a launcher that read the data in "
                              "file order; shuffled, the rest of its epoch would repeat some "
                              "examples and skip others", "set data.shuffle=false to go on "
                              "in file order (exact), or start in a new run.output_dir; "
                              "nothing there was touched")
        _note(f"{latest.name} holds no data order (an older launcher's): it goes on in file "
              "order (data.shuffle=false), as it was read")
    problems += checkpoints.order_problems(state, plan.recipe)
    if problems:
        raise RecipeError("run.output_dir", f"{latest} cannot go on under this recipe: "
                          f"{'; '.join(problems)}", "use the recipe and global batch that run "
                          "was started with, or a new run.output_dir; nothing there was touched")
    saved_world = state.get("world_size", plan.world_size)
    if (latest / "deepspeed").is_dir() and saved_world != plan.world_size:
        # DeepSpeed's own checkpoint holds one optimizer shard per rank, cut for that world.
        raise RecipeError("--nproc-per-node", f"{latest} is a DeepSpeed ZeRO checkpoint of "
                          f"{saved_world} ranks and this launch has {plan.world_size}",
                          f"resume a {plan.recipe.scale.strategy} run on {saved_world} ranks; "
                          "nothing there was touched")
    pos = state.get("position", {})
    readers, workers = pos.get("readers", 0), max(plan.recipe.data.num_workers, 1)
    if readers and pos.get("examples") and (saved_world, readers) != (
            plan.world_size, plan.world_size * workers):
        # Each reader (rank x worker) read its own shards: another split is another order.
        raise RecipeError("--nproc-per-node", f"{latest} stopped mid-epoch in a stream whose "
                          f"shards its {saved_world} ranks x {readers // saved_world} workers "
                          f"each read their own, and this launch has {plan.world_size} x "
                          f"{workers}", f"resume on {saved_world} ranks with data.num_workers="
                          f"{readers // saved_world}; nothing there was touched")
    return state["step"]


def _note(text: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"note: {escape(text)}", highlight=False, soft_wrap=True)


def _warn(text: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[yellow]warning:[/] {escape(text)}", highlight=False,
                               soft_wrap=True)


def resume_plan(run_dir: str, nodes: Optional[int], procs_per_node: Optional[int],
                executor: Optional[str] = None) -> Plan:
    """The run's own plan, on a new world size if asked: the global batch is kept and the
    accumulation derived again."""
    rd = RunDir(Path(run_dir).expanduser().resolve())
    plan_file = rd.plan / "plan.json"
    if not plan_file.is_file():
        raise RecipeError("RUN_DIR", f"{rd.root} holds no run (no plan/plan.json)",
                          "give the run directory that `launcher run` printed")
    raw = json.loads(plan_file.read_text())
    old = Plan.from_json(plan_file.read_text())
    if "shuffle" not in raw["recipe"].get("data", {}):
        # Written by a launcher from before data.shuffle, which read every epoch in file
        # order: the run goes on in that order (check() says so).
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
