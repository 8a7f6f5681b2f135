"""What `run`, `resume` and `sweep` do before and at a launch: the model exists, no stale
build lock would hang DeepSpeed, notes on the data and memory, the executor's own checks (and
the step a run resumes from), the plan files, then the job."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from launcher import executors
from launcher.errors import RecipeError
from launcher.plan.build import Plan


def launch(plan: Plan, console: Console, *, dry_run: bool = False, explain: bool = False,
           must_resume: bool = False) -> int:
    executor = executors.for_plan(plan)
    check_model(plan)
    check_op_builds(plan)
    data_notes(plan, console)
    memory_note(plan, console)
    step = executor.check(plan)
    if step is None and must_resume:
        raise RecipeError("RUN_DIR", f"{plan.run_dir} has no checkpoint to resume from",
                          "start it again with `launcher run` and the same run.output_dir")
    if step is not None:
        console.print(f"resuming {plan.run_dir} from step {step} of {plan.total_steps}",
                      highlight=False)
    if explain:
        from launcher.plan.explain import explain as explain_plan
        explain_plan(plan, console)
    plan_dir = executor.prepare(plan)
    if dry_run:
        console.print(f"plan written to {plan_dir}; not launched (--dry-run)")
        return 0
    return executor.submit(plan, plan_dir, console)


def check_model(plan: Plan) -> None:
    """Before anything is launched (or written by --dry-run): the model and tokenizer exist."""
    from launcher.plan import model_source

    try:
        model_source.check(plan.recipe.model)
    except RecipeError as err:
        raise err.with_source(shown(plan.recipe_path)) from None


def check_op_builds(plan: Plan) -> None:
    """A ZeRO run would hang on a build lock a killed op build left behind (op_builds.py)."""
    from launcher import op_builds

    op_builds.check(plan.recipe.scale.strategy)


def model_note(plan: Plan, console: Console) -> None:
    """`render` writes files for another machine (a cluster whose cache may hold the model):
    a model not found here is a warning, not an error."""
    try:
        check_model(plan)
    except RecipeError as err:
        console.print(f"[yellow]warning:[/] {escape(err.one_line())} (`run` refuses this)",
                      highlight=False, soft_wrap=True)


def memory_note(plan: Plan, console: Console) -> None:
    from launcher import tasks
    from launcher.plan.memory import fit_warning

    try:
        warning = fit_warning(plan, tasks.for_recipe(plan.recipe))
    except RecipeError as err:
        raise err.with_source(shown(plan.recipe_path)) from None
    if warning:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


def data_notes(plan: Plan, console: Console) -> None:
    from launcher.plan.scan import Scan

    for which, found in plan.data_checks.items():
        note = Scan(**found).describe_empty(f"data.{which}")
        if note:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)


def shown(path: str) -> str:
    """A recipe path as the user would type it: relative to here when it is below here."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def scale_overrides(args) -> list[str]:
    """--nodes, --nproc-per-node and --executor as the recipe overrides they stand for."""
    flags = []
    for key, value in (("scale.nodes", getattr(args, "nodes", None)),
                       ("scale.procs_per_node", args.procs_per_node),
                       ("run.executor", getattr(args, "executor", None))):
        if value is not None:
            flags.append(f"{key}={value}")
    return flags
