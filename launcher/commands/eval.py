"""`launcher eval RUN_DIR`: a run's final model or a checkpoint on its eval data or any file,
in the calling process or under torchrun (launcher.engine.eval_main does the work)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from launcher import tasks
from launcher.engine import device
from launcher.commands.trained import check_data, pick_checkpoint
from launcher.errors import RecipeError
from launcher.executors.local import threads_per_rank
from launcher.plan.decisions import with_decisions
from launcher.run_dir import open_run


def main(args, console: Console) -> int:
    rd, plan = open_run(args.run_dir)
    overrides, data, nproc = list(args.overrides), args.data, args.procs_per_node
    plan = with_decisions(plan, overrides)
    chosen = pick_checkpoint(rd, args.checkpoint)
    if data is not None:
        data = check_data(plan, data)
    elif not plan.has_eval:
        raise RecipeError("--data", "the run's recipe has no eval data",
                          "pass --data FILE to evaluate on")
    d = plan.recipe.data
    stem = Path(data).stem if data else Path(d.eval or d.train).stem
    # eval/final-on-dev+task.null_threshold=2.5/: another decision, another directory
    suffix = "".join(f"+{o.strip()}" for o in overrides).replace("/", "_")
    name = f"{chosen or 'final'}-on-{stem}{suffix}"
    if nproc < 1:
        raise RecipeError("--nproc-per-node", f"must be 1 or more, got {nproc}", "pass 1 or more")
    # The plan's device, as training had it (the same refusal as `launcher run`).
    device.refuse_here(plan, nproc)
    console.print(f"evaluating {chosen or 'final'} of {rd.root} on {data or stem} "
                  f"({nproc} process(es))", highlight=False)
    if nproc == 1:
        # In this process, as `launcher predict`: one interpreter start fewer; world 1
        # initialises nothing of torch.distributed, and a RecipeError reaches cli.main.
        from launcher.engine.eval_main import run_eval

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as the torchrun ranks have it
        run_eval(rd.root, chosen, data, name, overrides, world=1)
    else:
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        env.setdefault("OMP_NUM_THREADS", threads_per_rank(nproc))
        argv = [str(rd.root), name, *(["--checkpoint", chosen] if chosen else []),
                *(["--data", data] if data else []), *(f"--set={o}" for o in overrides)]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "launcher.engine.eval_main", *argv]
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            return proc.returncode
    out = rd.eval / name
    metrics = json.loads((out / "metrics.json").read_text())
    task = tasks.for_recipe(plan.recipe)
    console.print(task.table(metrics))
    head = ", ".join(f"{k} {v:.4f}" for k, v in task.headline(metrics).items())
    console.print(f"{head} on {metrics['examples']:,} examples; wrote {out}/", highlight=False)
    return 0
