"""`launcher logs RUN_DIR [--rank R]`: one rank's log, as it was written."""

from __future__ import annotations

import sys

from rich.console import Console

from launcher import executors
from launcher.errors import RecipeError
from launcher.run_dir import open_run


def main(args, console: Console) -> int:
    rd, plan = open_run(args.run_dir)
    path = executors.for_run(rd).logs(rd, args.rank)
    if not path.is_file():
        have = sorted(p.stem for p in rd.logs.glob("rank*.log")) if rd.logs.is_dir() else []
        raise RecipeError("--rank", f"{path} does not exist (world size {plan.world_size})",
                          f"use one of {have or 'the ranks, once the job has started'}")
    sys.stdout.write(path.read_text(errors="replace"))  # as written: no wrapping, no markup
    return 0
