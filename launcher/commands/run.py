"""`launcher run RECIPE [section.field=value ...]`: plan the recipe and launch it."""

from __future__ import annotations

from rich.console import Console

from launcher import plan as plan_mod
from launcher.commands.launch import launch, scale_overrides
from launcher.recipe.load import load


def main(args, console: Console) -> int:
    plan = plan_mod.build(load(args.recipe, [*args.overrides, *scale_overrides(args)]))
    return launch(plan, console, dry_run=args.dry_run, explain=args.explain)
