"""`launcher sweep R.py optim.lr=1e-5,2e-5 run.seed=1,2`: every combination, one run each.

On Slurm the points go in as job arrays (submitit's batch submission, so each point is still
requeued from its checkpoint when preempted), one array per distinct Slurm request: an array
has one sbatch script, so points that differ in nodes, GPUs, CPUs, time or signal cannot share
one. Locally they run one after another. The command waits for them and prints one table of
their final metrics; SWEEP_DIR/sweep.json lists every point, for `launcher status SWEEP_DIR`.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from launcher.errors import RecipeError
from launcher.recipe.schema import SECTIONS


def _full_key(key: str) -> str:
    if "." in key:
        return key
    owners = [name for name, cls in SECTIONS.items() if key in cls.__dataclass_fields__]
    if len(owners) != 1:
        raise RecipeError(key, "is not a field of one recipe section" if not owners else
                          f"is a field of {', '.join(owners)}", "write it as section.field, "
                          "e.g. optim.lr=1e-5,2e-5")
    return f"{owners[0]}.{key}"


def points(axes: list[str]) -> list[list[str]]:
    """['optim.lr=1,2', 'seed=3'] -> [['optim.lr=1', 'run.seed=3'], ['optim.lr=2', ...]]."""
    grid = []
    for axis in axes:
        key, sep, values = axis.partition("=")
        if not sep or not values:
            raise RecipeError(axis, "is not section.field=v1,v2,...", "write e.g. optim.lr=1e-5,2e-5")
        grid.append([f"{_full_key(key)}={v.strip()}" for v in values.split(",") if v.strip()])
    return [list(p) for p in itertools.product(*grid)]


def slug(point: list[str]) -> str:
    text = "_".join(p.split(".", 1)[1] for p in point)
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)


def main(args, console: Console) -> int:
    from launcher.commands.launch import scale_overrides

    return sweep(args.recipe, args.axes, [*args.fixed, *scale_overrides(args)], args.out,
                 console)


def sweep(recipe: str, axes: list[str], flags: list[str], out: Optional[str],
          console: Console) -> int:
    from launcher import plan as plan_mod
    from launcher.commands.launch import check_model, check_op_builds
    from launcher.recipe.load import load

    grid = points(axes)
    base = load(recipe, flags)
    root = Path(out or f"sweeps/{base.recipe.run.name or Path(recipe).stem}-"
                      f"{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    plans = [plan_mod.build(load(recipe, [*flags, *point,
                                          f"run.output_dir={root / slug(point)}"]))
             for point in grid]
    check_model(plans[0])  # every point has the same model (a swept model.name: each one)
    for plan in plans[1:]:
        if plan.recipe.model != plans[0].recipe.model:
            check_model(plan)
    for plan in plans:  # a swept scale.strategy: each point's
        check_op_builds(plan)
    console.print(f"sweep of {len(plans)} point(s) under {root}", highlight=False)
    if plans[0].recipe.run.executor == "slurm":
        results = _on_slurm(grid, plans, root, console)
    else:
        root.mkdir(parents=True, exist_ok=True)
        (root / "sweep.json").write_text(json.dumps({"points": [
            {"point": " ".join(point), "run_dir": plan.run_dir, "job_id": None}
            for point, plan in zip(grid, plans)]}, indent=2) + "\n")
        results = _locally(plans, console)
    _table(grid, plans, results, console)
    return 0 if all(isinstance(r, dict) for r in results) else 1


def _locally(plans, console: Console) -> list:
    from launcher.executors.local import EXIT_INTERRUPTED, LocalExecutor

    results = []
    for plan in plans:
        if "Ctrl-C" in results:
            results.append("not run (Ctrl-C)")  # Ctrl-C stops the sweep, not one point
            continue
        ex = LocalExecutor()
        ex.check(plan)
        rc = ex.submit(plan, ex.prepare(plan), console)
        results.append(_summary(plan) if rc == 0 else
                       "Ctrl-C" if rc == EXIT_INTERRUPTED else f"exit status {rc}")
    return results


def groups(plans) -> list[list[int]]:
    """Indices of the points that share one Slurm request, in order of first appearance."""
    from launcher.executors import slurm

    by_request: dict[str, list[int]] = {}
    for i, plan in enumerate(plans):
        by_request.setdefault(slurm.request(plan), []).append(i)
    return list(by_request.values())


def array_script(plan, folder: Path, count: int) -> str:
    """The sbatch script submitit submits for `count` points of `plan`'s request."""
    from launcher.executors import slurm

    ex = slurm.executor_for(plan, folder)
    if count > 1:  # submitit submits a lone point as a plain job, not an array
        ex.parameters["map_count"] = count
    return ex._make_submission_file_text(ex._submitit_command_str, "sweep")


def _on_slurm(grid, plans, root: Path, console: Console) -> list:
    from launcher.executors import slurm
    from launcher.executors.slurm_job import NodeJob
    from launcher.plan.render import private, write_file
    from launcher.run_dir import RunDir

    ex_slurm = slurm.SlurmExecutor()
    for plan in plans:
        ex_slurm.check(plan)
        ex_slurm.prepare(plan)
        ex_slurm.clear_outcome(RunDir(plan.run_dir))
    jobs: list = [None] * len(plans)
    arrays = []
    for k, members in enumerate(groups(plans)):
        folder = root / "slurm" / f"request-{k}"
        folder.mkdir(parents=True, exist_ok=True)
        first = plans[members[0]]
        write_file(folder / "sbatch.sh", array_script(first, folder / "%j", len(members)),
                   private=private(first))
        executor = slurm.executor_for(first, folder / "%j")
        with slurm.submitting(first), executor.batch():
            submitted = [executor.submit(NodeJob(str(RunDir(plans[i].run_dir).plan),
                                                 slurm.node_env(plans[i]),
                                                 plans[i].recipe.checkpoint.grace_s))
                         for i in members]
        for i, job in zip(members, submitted):
            jobs[i] = job
            slurm.record_job(RunDir(plans[i].run_dir), job.job_id)
        array_id = submitted[0].job_id.split("_")[0]
        arrays.append({"job_id": array_id, "sbatch": str(folder / "sbatch.sh"),
                       "points": [" ".join(grid[i]) for i in members]})
        p = slurm.parameters(first)
        console.print(f"[bold]submitted[/] {'job array' if len(members) > 1 else 'job'} "
                      f"{array_id} ({len(members)} point(s): {p['nodes']} node(s) x "
                      f"{first.procs_per_node}, {p.get('gpus_per_node', 0)} GPU(s) and "
                      f"{p['cpus_per_task']} CPU(s) per node, {p['time']} min); "
                      f"{folder / 'sbatch.sh'}", highlight=False)
    (root / "sweep.json").write_text(json.dumps({
        "points": [{"point": " ".join(point), "run_dir": plan.run_dir, "job_id": job.job_id}
                   for point, plan, job in zip(grid, plans, jobs)],
        "arrays": arrays}, indent=2) + "\n")
    console.print(f"waiting for {len(jobs)} point(s) in {len(arrays)} submission(s) (Ctrl-C "
                  f"leaves them running; `python -m launcher status {root}` follows them)",
                  highlight=False)
    while not all(job.done() for job in jobs):
        time.sleep(2)
    results = []
    for plan, job in zip(plans, jobs):
        try:
            job.result()
            results.append(_summary(plan))
        except Exception as err:  # a failed point is a row of the table, not the end
            results.append(str(err).strip().splitlines()[-1][:120])
    return results


def _summary(plan) -> dict:
    from launcher.run_dir import RunDir
    return json.loads(RunDir(plan.run_dir).summary.read_text())


def _table(grid, plans, results, console: Console) -> None:
    metric_names = sorted({k for r in results if isinstance(r, dict) for k in r.get("eval", {})})
    table = Table(title="Sweep", title_justify="left")
    for col in ("point", "steps", "final loss", *[f"eval {m}" for m in metric_names],
                "run directory"):
        table.add_column(col)
    for point, plan, result in zip(grid, plans, results):
        if isinstance(result, dict):
            ev = result.get("eval", {})
            table.add_row(" ".join(point), str(result["steps"]), f"{result['final_loss']:.4f}",
                          *[f"{ev[m]:.4f}" if m in ev else "-" for m in metric_names],
                          plan.run_dir)
        else:
            table.add_row(" ".join(point), "failed", result, *["-"] * len(metric_names),
                          plan.run_dir)
    console.print(table)
