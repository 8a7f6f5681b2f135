"""What `eval` and `predict` share: which of a run's checkpoints to use, and a data file
checked as `run` checks data, each reported in one line before a model is loaded."""

from __future__ import annotations

from typing import Optional

from launcher import sources, tasks
from launcher.checkpoint import store, trust
from launcher.errors import RecipeError
from launcher.plan.build import Plan, local_columns
from launcher.plan.scan import scan
from launcher.run_dir import RunDir


def pick_checkpoint(rd: RunDir, checkpoint: Optional[str]) -> Optional[str]:
    """None (the final export), or the name of a complete checkpoint directory."""
    if checkpoint in (None, "final"):
        if rd.final.is_dir():
            return None
        checkpoint = "latest"
    found = {"latest": rd.latest(), "best": rd.best()}.get(checkpoint)
    number = checkpoint.removeprefix("step-")
    if found is None and checkpoint.startswith("step-") and number.isdigit():
        found = rd.checkpoint(int(number))  # step-200 and step-0000200 name the same one
    have = [p.name for p in store.complete(rd)]
    if found is None or not (found / store.MANIFEST).is_file():
        raise RecipeError("--checkpoint", f"{checkpoint} is not a complete checkpoint of "
                          f"{rd.root}", f"use final, best, latest or one of {have or '(none)'}")
    if (found / "deepspeed").is_dir():
        raise RecipeError("--checkpoint", f"{found.name} is a DeepSpeed ZeRO checkpoint, which "
                          "eval and predict do not read", "use final (the run's export), or a "
                          "checkpoint of a ddp or fsdp run")
    refused = trust.refusal(found)
    if refused:
        raise RecipeError("--checkpoint", f"{found.name} is refused: {refused}",
                          f"use final or another of {have}")
    return found.name


def check_data(plan: Plan, data: str, flag: str = "--data") -> str:
    """A local file's columns and every row checked as `run` checks data.eval (`--file`:
    only what predict reads, the texts); a hub name is passed on as it is."""
    task = tasks.for_recipe(plan.recipe)
    labeled = flag == "--data"
    src = sources.resolve(data, config=plan.recipe.data.dataset_config,
                          split=plan.recipe.data.eval_split)
    if src.is_local:
        have = local_columns(flag, src)
        needed = {"data.text_column": task.cols.text, "data.text_pair_column": task.cols.pair}
        if labeled:
            needed["data.label_column"] = task.cols.label
        for field, col in needed.items():
            if col is not None and col not in have:
                raise RecipeError(flag, f"{data} has no column '{col}' ({field} of the "
                                  f"run's recipe; it has {', '.join(have)})",
                                  "rename the column or use a file in the training format")
        scan(task, src, field=flag, labeled=labeled)
        return str(src.path)
    return data
