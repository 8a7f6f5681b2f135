"""`launcher plan-memory RECIPE`: estimated per-GPU memory under every strategy."""

from __future__ import annotations

from rich.console import Console

from launcher import plan as plan_mod
from launcher.commands.launch import scale_overrides, shown
from launcher.errors import RecipeError
from launcher.recipe.load import load


def main(args, console: Console) -> int:
    from launcher.plan.memory_report import memory_command

    plan = plan_mod.build(load(args.recipe, [*args.overrides, *scale_overrides(args)]))
    try:
        return memory_command(plan, console)
    except RecipeError as err:
        raise err.with_source(shown(plan.recipe_path)) from None
