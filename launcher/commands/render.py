"""`launcher render RECIPE --out DIR`: write the plan files (and sbatch.sh for Slurm) without
running anything, for a machine this one may not be."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from launcher import plan as plan_mod
from launcher.commands.launch import data_notes, memory_note, model_note, scale_overrides
from launcher.recipe.load import load


def main(args, console: Console) -> int:
    plan = plan_mod.build(load(args.recipe, [*args.overrides, *scale_overrides(args)]))
    model_note(plan, console)
    data_notes(plan, console)
    memory_note(plan, console)
    if args.explain:
        from launcher.plan.explain import explain
        explain(plan, console)
    # Absolute, so launch.sh and accelerate.yaml work from any directory.
    out = Path(args.out).resolve()
    for path in plan_mod.write(plan, out):
        console.print(f"wrote {path}")
    if plan.recipe.run.executor == "slurm":
        from launcher.executors.slurm import sbatch_script
        from launcher.plan.render import private, write_file
        write_file(out / "sbatch.sh", sbatch_script(plan), private=private(plan))
        console.print(f"wrote {out / 'sbatch.sh'}")
    return 0
