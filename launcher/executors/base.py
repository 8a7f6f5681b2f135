"""What every executor does, so that run, resume, sweep, status, logs and cancel never ask
which one they hold: `check` refuses what cannot run there, `prepare` writes the plan files,
`submit` starts the job, `state` says what became of it, `cancel` stops it (every rank saves
its step first), `logs` finds a rank's log."""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rich.console import Console

from launcher import plan as plan_mod
from launcher.checkpoint import compat
from launcher.engine import faults, trackers
from launcher.plan.build import Plan
from launcher.run_dir import RunDir


@dataclass(frozen=True)
class JobState:
    """What the executor knows of a run's job; the run directory tells the rest (step, loss,
    finished, failed, preempted)."""
    executor: str  # "local" or "slurm"
    job: str  # Slurm's job id, or the local launcher's pid@host
    state: str  # in the executor's words: RUNNING, PENDING, ... or running, ended, ...
    running: Optional[bool] = None  # None: cannot be told from here (another host)
    nodes: str = ""
    restarts: int = 0

    def describe(self) -> str:
        return (f"{self.job}: {self.state}" + (f" on {self.nodes}" if self.nodes else "")
                + (f", requeued {self.restarts} time(s)" if self.restarts else ""))


def with_test_faults(plan: Plan) -> Plan:
    """The plan with the fault tests' LAUNCHER_FAULT from this shell (engine/faults.py): the
    only environment the ranks' faults come from, read here so the engine reads only its plan."""
    return dataclasses.replace(plan, faults=faults.parse(os.environ.get(faults.ENV, "")))


class Executor(ABC):
    name: str

    def check(self, plan: Plan) -> Optional[int]:
        """Refuse what cannot run here; the step the run will resume from, if any."""
        self.refuse(plan)
        trackers.check(plan)
        return compat.check(plan)

    @abstractmethod
    def refuse(self, plan: Plan) -> None:
        """Raise RecipeError for what this executor cannot run."""

    def prepare(self, plan: Plan) -> Path:
        """Write the plan's files into RUN_DIR/plan/ (what --dry-run stops after)."""
        rd = RunDir(plan.run_dir)
        rd.logs.mkdir(parents=True, exist_ok=True)
        plan_mod.write(with_test_faults(plan), rd.plan)
        return rd.plan

    @abstractmethod
    def submit(self, plan: Plan, plan_dir: Path, console: Console) -> int:
        """Start the job; the exit status for the CLI."""

    @abstractmethod
    def state(self, rd: RunDir) -> Optional[JobState]:
        """None when this executor never started a job for the run."""

    @abstractmethod
    def cancel(self, rd: RunDir, console: Console) -> int:
        """Stop the run's job, or refuse in one line (RecipeError) if there is none to stop."""

    def logs(self, rd: RunDir, rank: int) -> Path:
        # Every rank writes RUN_DIR/logs/rank{R}.log, on whichever machine it runs.
        return rd.rank_log(rank)

    @staticmethod
    def clear_outcome(rd: RunDir) -> None:
        """What an earlier attempt left must not be read as this one's outcome."""
        rd.preempted.unlink(missing_ok=True)
        for stale in rd.logs.glob("rank*.error"):
            stale.unlink()
