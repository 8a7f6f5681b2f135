"""`launcher status | logs | cancel RUN_DIR`: follow a run, wherever it runs.

The state comes from Slurm for a submitted job (`scontrol`, which works without accounting),
and from the run directory for every run: the last metrics line, the summary, a preemption.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from launcher.errors import RecipeError
from launcher.run_dir import RunDir
from launcher.trained import open_run


def job_id(rd: RunDir) -> Optional[str]:
    return json.loads(rd.slurm_job.read_text())["job_id"] if rd.slurm_job.is_file() else None


def slurm_state(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job, "-o"], capture_output=True, text=True)
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    return {k: fields[k] for k in ("JobState", "NodeList", "RunTime", "Restarts", "Reason")
            if k in fields}


def status_command(run_dir: str, console: Console) -> int:
    sweep = Path(run_dir).expanduser() / "sweep.json"
    if sweep.is_file():
        return _sweep_status(sweep, console)
    rd, plan = open_run(run_dir)
    table = Table(title=f"Run {rd.root}", show_header=False, title_justify="left")
    job = job_id(rd)
    if job:
        state = slurm_state(job)
        table.add_row("Slurm job", f"{job}: {state.get('JobState', 'gone from scontrol')}"
                      + (f" on {state['NodeList']}" if state.get("NodeList") else "")
                      + (f", requeued {state['Restarts']} time(s)"
                         if state.get("Restarts", "0") != "0" else ""))
    error = None if rd.summary.is_file() else rd.first_error()
    if rd.summary.is_file():
        table.add_row("state", "finished")
    elif error is not None:
        table.add_row("state", f"failed: rank {error[0]}: {error[1]}")
    elif rd.preempted.is_file():
        info = json.loads(rd.preempted.read_text())
        table.add_row("state", f"preempted at step {info['step']} ({info['signal']}); it goes "
                               "on when requeued or resumed")
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


def _sweep_status(sweep: Path, console: Console) -> int:
    """One row per point of a sweep: its job, state, step and loss."""
    info = json.loads(sweep.read_text())
    table = Table(title=f"Sweep {sweep.parent}", title_justify="left")
    for col in ("point", "Slurm job", "state", "step", "loss", "run directory"):
        table.add_column(col)
    for point in info["points"]:
        rd = RunDir(point["run_dir"])
        job = point.get("job_id")
        slurm = slurm_state(job).get("JobState", "gone from scontrol") if job else "-"
        error = None if rd.summary.is_file() else rd.first_error()
        state = ("finished" if rd.summary.is_file() else
                 f"failed: rank {error[0]}: {error[1]}" if error else
                 "preempted" if rd.preempted.is_file() else
                 "started" if rd.metrics.is_file() else "not started")
        lines = rd.metrics.read_text().splitlines() if rd.metrics.is_file() else []
        last = json.loads(lines[-1]) if lines else None
        table.add_row(point["point"], f"{job}: {slurm}" if job else "-", state,
                      str(last["step"]) if last else "-",
                      f"{last['loss']:.4f}" if last else "-", str(rd.root))
    console.print(table)
    return 0


def logs_command(run_dir: str, rank: int, console: Console) -> int:
    rd, plan = open_run(run_dir)
    path = rd.rank_log(rank)
    if not path.is_file():
        have = sorted(p.stem for p in rd.logs.glob("rank*.log")) if rd.logs.is_dir() else []
        raise RecipeError("--rank", f"{path} does not exist (world size {plan.world_size})",
                          f"use one of {have or 'the ranks, once the job has started'}")
    sys.stdout.write(path.read_text(errors="replace"))  # as written: no wrapping, no markup
    return 0


def cancel_command(run_dir: str, console: Console) -> int:
    rd, _ = open_run(run_dir)
    job = job_id(rd)
    if job is None:
        raise RecipeError("RUN_DIR", f"{rd.root} was not submitted to Slurm",
                          "stop a local run with Ctrl-C, or SIGTERM to save a checkpoint first")
    subprocess.run(["scancel", job], check=True)
    console.print(f"cancelled Slurm job {job}; resume it later with `python -m launcher resume "
                  f"{rd.root} --executor slurm`", highlight=False)
    return 0
