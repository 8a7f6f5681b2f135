"""Where a plan runs: `local` (torchrun on this machine) or `slurm` (submitit), both behind
`base.Executor`. Pick one for a plan to launch, or for a run directory to follow."""

from __future__ import annotations

from launcher.executors.base import Executor, JobState
from launcher.run_dir import RunDir

__all__ = ["Executor", "JobState", "for_plan", "for_run"]


def _named(name: str) -> Executor:
    # Imported on demand: the Slurm side needs submitit, the local side psutil.
    if name == "slurm":
        from launcher.executors.slurm import SlurmExecutor
        return SlurmExecutor()
    from launcher.executors.local import LocalExecutor
    return LocalExecutor()


def for_plan(plan) -> Executor:
    return _named(plan.recipe.run.executor)


def for_run(rd: RunDir) -> Executor:
    """The executor that started the run's latest job, from what it recorded in the run
    directory (a run submitted to Slurm and resumed locally, or the other way round, is
    followed where it went last); local for a run no executor started yet."""
    records = [(path.stat().st_mtime, name)
               for name, path in (("slurm", rd.slurm_job), ("local", rd.local_job))
               if path.is_file()]
    return _named(max(records)[1] if records else "local")
