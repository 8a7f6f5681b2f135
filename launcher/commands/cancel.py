"""`launcher cancel RUN_DIR`: stop a run's job, on Slurm or on this machine."""

from __future__ import annotations

from rich.console import Console

from launcher import executors
from launcher.run_dir import open_run


def main(args, console: Console) -> int:
    rd, _ = open_run(args.run_dir)
    return executors.for_run(rd).cancel(rd, console)
