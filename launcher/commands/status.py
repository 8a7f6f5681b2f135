"""`launcher status RUN_DIR | SWEEP_DIR`: state, step, loss, samples/s and ETA of a run, or one
row per point of a sweep. The job's state comes from the executor that started it (Slurm's
scontrol, or the local launcher's process); the rest from the run directory: the last metrics
line, the summary, a rank's error, a preemption."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from launcher import executors
from launcher.executors.base import JobState
from launcher.run_dir import RunDir, open_run


def main(args, console: Console) -> int:
    sweep = Path(args.run_dir).expanduser() / "sweep.json"
    if sweep.is_file():
        return _sweep_status(sweep, console)
    rd, plan = open_run(args.run_dir)
    job = executors.for_run(rd).state(rd)
    table = Table(title=f"Run {rd.root}", show_header=False, title_justify="left")
    if job is not None:
        table.add_row("Slurm job" if job.executor == "slurm" else "launcher", job.describe())
    table.add_row("state", state(rd, job))
    lines = rd.metrics.read_text().splitlines() if rd.metrics.is_file() else []
    if lines:
        last = json.loads(lines[-1])
        about = " (estimated: a token budget)" if plan.steps_estimated else ""
        table.add_row("step", f"{last['step']:,} of {plan.total_steps:,}{about} "
                              f"(epoch {last['epoch']})")
        table.add_row("loss", f"{last['loss']:.4f}")
        table.add_row("samples/s", f"{last['samples_per_s']:,.1f}")
        # (a token budget's steps hold varying numbers of examples: no ETA from samples/s)
        if not rd.summary.is_file() and last["samples_per_s"] > 0 and plan.global_batch:
            left = (plan.total_steps - last["step"]) * plan.global_batch / last["samples_per_s"]
            table.add_row("ETA", f"{left / 60:.1f} min of training")
    else:
        table.add_row("step", "no step logged yet")
    latest = rd.latest()
    table.add_row("last checkpoint", latest.name if latest else "none yet")
    console.print(table)
    return 0


def state(rd: RunDir, job: Optional[JobState]) -> str:
    """In words: finished, failed (which rank, why), preempted (at which step), running,
    stopped (its launcher gone without a summary), not started."""
    if rd.summary.is_file():
        return "finished"
    error = rd.first_error()
    if error is not None:
        return f"failed: rank {error[0]}: {error[1]}"
    if rd.preempted.is_file():
        info = json.loads(rd.preempted.read_text())
        return (f"preempted at step {info['step']} ({info['signal']}); it goes on when "
                "requeued or resumed")
    if job is None:
        return "started" if rd.metrics.is_file() else "not started"
    if job.executor == "local" and job.running is False:
        return ("stopped without a summary (killed or crashed); `launcher resume` goes on "
                "from the last checkpoint")
    return job.state.lower() if job.executor == "slurm" else job.state


def _sweep_status(sweep: Path, console: Console) -> int:
    """One row per point of a sweep: its job, state, step and loss."""
    info = json.loads(sweep.read_text())
    table = Table(title=f"Sweep {sweep.parent}", title_justify="left")
    for col in ("point", "Slurm job", "state", "step", "loss", "run directory"):
        table.add_column(col)
    for point in info["points"]:
        rd = RunDir(point["run_dir"])
        job = executors.for_run(rd).state(rd)
        slurm = f"{job.job}: {job.state}" if job and job.executor == "slurm" else "-"
        lines = rd.metrics.read_text().splitlines() if rd.metrics.is_file() else []
        last = json.loads(lines[-1]) if lines else None
        table.add_row(point["point"], slurm, state(rd, job).split(";")[0],
                      str(last["step"]) if last else "-",
                      f"{last['loss']:.4f}" if last else "-", str(rd.root))
    console.print(table)
    return 0
