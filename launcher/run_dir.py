"""The layout of a run directory, in one place, for the executor, the engine and the tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from launcher.plan.build import Plan


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.plan = self.root / "plan"
        self.logs = self.root / "logs"
        self.checkpoints = self.root / "checkpoints"
        self.eval = self.root / "eval"
        self.final = self.root / "final"
        self.trace = self.root / "trace"
        self.tensorboard = self.root / "tensorboard"
        self.metrics = self.root / "metrics.jsonl"
        self.summary = self.root / "summary.json"
        # there while a preempted run waits to go on: step, signal, checkpoint
        self.preempted = self.root / "preempted.json"
        self.slurm = self.root / "slurm"  # submitit's files, and job.json
        self.slurm_job = self.slurm / "job.json"  # the job id, for status, logs and cancel
        # A local run's launcher process (pid, host, start time; its end once it ends), for
        # status and cancel: what slurm/job.json is for a Slurm job.
        self.local_job = self.root / "local_job.json"

    def rank_log(self, rank: int) -> Path:
        return self.logs / f"rank{rank}.log"

    def rank_error(self, rank: int) -> Path:
        return self.logs / f"rank{rank}.error"

    def first_error(self) -> Optional[tuple[int, str]]:
        """(rank, last line of its error file) of the rank that failed first, if any."""
        errors = sorted(self.logs.glob("rank*.error"), key=lambda p: p.stat().st_mtime) \
            if self.logs.is_dir() else []
        for path in errors:
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                return int(path.stem.removeprefix("rank")), lines[-1].strip()
        return None

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:07d}"

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint, as LATEST names it; None before the first."""
        return self._pointer("LATEST")

    def best(self) -> Optional[Path]:
        """The checkpoint with the best eval metric so far, as BEST names it."""
        return self._pointer("BEST")

    def _pointer(self, name: str) -> Optional[Path]:
        pointer = self.checkpoints / name
        if not pointer.is_file():
            return None
        target = self.checkpoints / pointer.read_text().strip()
        return target if target.is_dir() else None


def open_run(run_dir: str | Path) -> tuple[RunDir, "Plan"]:
    """A run directory named on the command line, and the plan it ran (one line if none)."""
    from launcher.errors import RecipeError
    from launcher.plan.build import Plan

    rd = RunDir(Path(run_dir).expanduser().resolve())
    plan_file = rd.plan / "plan.json"
    if not plan_file.is_file():
        raise RecipeError("RUN_DIR", f"{rd.root} holds no run (no plan/plan.json)",
                          "give the run directory that `launcher run` printed")
    return rd, Plan.from_json(plan_file.read_text())
