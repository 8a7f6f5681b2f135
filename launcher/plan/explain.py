"""`--explain`: every resolved value and where it came from."""

from __future__ import annotations

import dataclasses

from rich.console import Console
from rich.table import Table

from launcher.plan.build import Plan
from launcher.recipe.schema import SECTIONS


def explain(plan: Plan, console: Console) -> None:
    table = Table(title=f"Resolved plan for {plan.recipe_path}", show_lines=False)
    for col in ("field", "value", "from"):
        table.add_column(col)
    for name in SECTIONS:
        section = getattr(plan.recipe, name)
        for f in dataclasses.fields(section):
            key = f"{name}.{f.name}"
            derived = plan.sources.get(key, "").startswith("derived")  # "derived: why"
            value = plan.derived.get(f.name) if derived else getattr(section, f.name)
            table.add_row(key, repr(value), plan.sources.get(key, "default"))
    for key, value in plan.derived.items():
        how = "derived"
        if plan.steps_estimated and key in ("steps_per_epoch", "total_steps", "warmup_steps"):
            how = ("estimate: from a word count of data.train; the engine counts the real "
                   "steps from the token lengths")
            if key != "steps_per_epoch" and plan.recipe.run.epochs is None:
                how = "derived"
        table.add_row(f"plan.{key}", repr(value), how)
    table.add_row("plan.run_dir", plan.run_dir, "derived")
    console.print(table)
