"""Whether a checkpoint can go on under a recipe and plan: the same model, the same data order,
the same global batch. Checked before launching (`check`, by every executor) and again by the
engine, which a requeued job reaches directly."""

from __future__ import annotations

from typing import Any, Optional

from launcher.checkpoint import store
from launcher.errors import RecipeError


def fingerprint(recipe: Any, labels: tuple) -> dict[str, Any]:
    """What a checkpoint's weights are shaped by: another value means another model."""
    m = recipe.model
    return {"model.name": m.name, "task.type": recipe.task.type, "task.labels": list(labels),
            "model.head_hidden": m.head_hidden,
            "model.config_overrides": dict(sorted(dict(m.config_overrides).items()))}


def data_order(recipe: Any) -> dict[str, Any]:
    """What a saved data position means: under other values it would skip or repeat examples."""
    d = recipe.data
    return {"data.train": d.train, "data.streaming": d.streaming, "data.shuffle": d.shuffle,
            "data.shuffle_window": d.shuffle_window if d.streaming and d.shuffle else None,
            "run.seed": recipe.run.seed if d.shuffle else None,
            # steps are cut by the token budget (engine/budget.py); absent means none
            **({"scale.tokens_per_step": recipe.scale.tokens_per_step}
               if recipe.scale.tokens_per_step else {})}


UNRECORDED_ORDER = ("it was written before checkpoints recorded their data order, by a "
                    "launcher that read the data in file order")


def order_problems(state: dict[str, Any], recipe: Any) -> list[str]:
    saved = state.get("data_order")
    if saved is None:  # a launcher from before data.shuffle: its position counts file order
        at = state.get("position", {})
        mid_epoch = bool(at.get("row") or at.get("examples"))
        return [f"{UNRECORDED_ORDER}, and the recipe shuffles it (data.shuffle=true)"
                ] if recipe.data.shuffle and mid_epoch else []
    return differences(saved, data_order(recipe))


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{key} was {saved.get(key)!r}, the recipe now says {now.get(key)!r}"
            for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]


def incompatible(state: dict[str, Any], now: dict[str, Any], global_batch: int) -> list[str]:
    """Why a checkpoint cannot go on under this recipe and plan (empty: it can). Checked
    before launching and again by the engine, which a requeued job reaches directly."""
    problems = differences(state.get("fingerprint", {}), now)
    if state["global_batch"] != global_batch and not (state["global_batch"] and global_batch):
        problems.append("the run was started with a token budget (scale.tokens_per_step) and "
                        "the plan has a global batch, or the other way round")
    elif state["global_batch"] != global_batch:
        # The data position is counted in global batches.
        problems.append(f"the global batch was {state['global_batch']} and the plan has "
                        f"{global_batch} (set scale.global_batch={state['global_batch']})")
    return problems


def check(plan: Any) -> Optional[int]:
    """The step a launch of `plan` will continue from (None: a fresh run); a recipe that
    does not fit the run directory's checkpoint is refused here, before launching (no torch,
    no hashing: the engine verifies the checkpoint itself and falls back to an older one when
    a file is damaged). A checkpoint holding something that could run code when loaded is
    skipped here already, with a warning."""
    from launcher import tasks  # the task's labels shape the head; tasks import the recipe
    from launcher.run_dir import RunDir

    rd = RunDir(plan.run_dir)
    if rd.summary.is_file() and rd.final.is_dir():
        raise RecipeError("run.output_dir", f"{rd.root} holds a finished run (summary.json "
                          "and final/)", "choose a new run.output_dir, or use `launcher eval` "
                          "on it; nothing there was touched")
    choice = store.loadable(rd)
    for warning in choice.warnings:
        _say("[yellow]warning:[/]",
             f"{warning}; falling back to an older checkpoint" if choice.path else warning)
    if choice.path is None and choice.warnings:
        raise RecipeError("RUN_DIR", f"no checkpoint in {rd.checkpoints} is safe to load",
                          "start over in a new run.output_dir (or restore the run's "
                          "checkpoints from a copy you trust); nothing there was touched")
    latest = choice.path
    if latest is None or not (latest / store.STATE).is_file():
        return None
    state = store.read_state(latest)
    now = fingerprint(plan.recipe, tasks.for_recipe(plan.recipe).labels)
    problems = incompatible(state, now, plan.global_batch)
    at = state.get("position", {})
    if "data_order" not in state and (at.get("row") or at.get("examples")):
        if plan.recipe.data.shuffle:
            raise RecipeError("data.shuffle", f"{latest} was written before checkpoints "
                              "recorded their data order, by a launcher that read the data in "
                              "file order; shuffled, the rest of its epoch would repeat some "
                              "examples and skip others", "set data.shuffle=false to go on "
                              "in file order (exact), or start in a new run.output_dir; "
                              "nothing there was touched")
        _say("note:", f"{latest.name} holds no data order (an older launcher's): it goes on in "
             "file order (data.shuffle=false), as it was read")
    problems += order_problems(state, plan.recipe)
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
    readers, workers = at.get("readers", 0), max(plan.recipe.data.num_workers, 1)
    if readers and at.get("examples") and not at.get("streams") and (
            saved_world, readers) != (plan.world_size, plan.world_size * workers):
        # Each reader (rank x worker) read its own shards, and this older checkpoint does not
        # say where each stands (newer ones do, and go on at any split).
        raise RecipeError("--nproc-per-node", f"{latest} stopped mid-epoch in a stream whose "
                          f"shards its {saved_world} ranks x {readers // saved_world} workers "
                          f"each read their own, and this launch has {plan.world_size} x "
                          f"{workers}; it was written by a launcher that did not record where "
                          f"each reader stood", f"resume on {saved_world} ranks with "
                          f"data.num_workers={readers // saved_world}; nothing there was touched")
    return state["step"]


def _say(label: str, text: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"{label} {escape(text)}", highlight=False, soft_wrap=True)
