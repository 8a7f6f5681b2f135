"""`launcher eval` and `launcher predict`: a finished run's model on any file or text.

Everything a user can get wrong (no such run, checkpoint or file, a column or label the task
cannot read) is checked here and reported in one line before a model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from rich.console import Console

from launcher import checkpoint_scan, checkpoints, sources, tasks
from launcher.engine import device
from launcher.errors import RecipeError
from launcher.plan.build import Plan, local_columns
from launcher.plan.scan import scan
from launcher.run_dir import RunDir


def open_run(run_dir: str) -> tuple[RunDir, Plan]:
    rd = RunDir(Path(run_dir).expanduser().resolve())
    plan_file = rd.plan / "plan.json"
    if not plan_file.is_file():
        raise RecipeError("RUN_DIR", f"{rd.root} holds no run (no plan/plan.json)",
                          "give the run directory that `launcher run` printed")
    return rd, Plan.from_json(plan_file.read_text())


# What eval and predict may change: how outputs become answers, never the model.
DECISIONS = ("task.null_threshold", "task.max_answer_length", "task.threshold")


def with_decisions(plan: Plan, overrides: list[str]) -> Plan:
    """The run's plan with `overrides` of DECISIONS applied (checked as at plan time)."""
    if not overrides:
        return plan
    from launcher.recipe.load import apply_overrides

    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in DECISIONS:
            raise RecipeError(key, "cannot be changed after training (eval and predict use "
                              "the trained model as it is)",
                              f"override only {', '.join(DECISIONS)}")
    recipe = apply_overrides(plan.recipe, list(overrides), {})
    tasks.for_recipe(recipe).validate()
    return dataclasses.replace(plan, recipe=recipe)


def pick_checkpoint(rd: RunDir, checkpoint: Optional[str]) -> Optional[str]:
    """None (the final export), or the name of a complete checkpoint directory."""
    if checkpoint in (None, "final"):
        if rd.final.is_dir():
            return None
        checkpoint = "latest"
    found = {"latest": rd.latest(), "best": rd.best()}.get(checkpoint)
    number = checkpoint.removeprefix("step-")
    if found is None and checkpoint.startswith("step-") and number.isdigit():
        found = rd.checkpoint(int(number))  # step-200 and step-0000200 name the same one
    have = [p.name for p in checkpoints.complete(rd)]
    if found is None or not (found / checkpoints.MANIFEST).is_file():
        raise RecipeError("--checkpoint", f"{checkpoint} is not a complete checkpoint of "
                          f"{rd.root}", f"use final, best, latest or one of {have or '(none)'}")
    if (found / "deepspeed").is_dir():
        raise RecipeError("--checkpoint", f"{found.name} is a DeepSpeed ZeRO checkpoint, which "
                          "eval and predict do not read", "use final (the run's export), or a "
                          "checkpoint of a ddp or fsdp run")
    refused = checkpoint_scan.refusal(found)
    if refused:
        raise RecipeError("--checkpoint", f"{found.name} is refused: {refused}",
                          f"use final or another of {have}")
    return found.name


def check_data(plan: Plan, data: str, flag: str = "--data") -> str:
    """A local file's columns and every row checked as `run` checks data.eval (`--file`:
    only what predict reads, the texts); a hub name is passed on as it is."""
    task = tasks.for_recipe(plan.recipe)
    labeled = flag == "--data"
    src = sources.resolve(data, config=plan.recipe.data.dataset_config,
                          split=plan.recipe.data.eval_split)
    if src.is_local:
        have = local_columns(flag, src)
        needed = {"data.text_column": task.cols.text, "data.text_pair_column": task.cols.pair}
        if labeled:
            needed["data.label_column"] = task.cols.label
        for field, col in needed.items():
            if col is not None and col not in have:
                raise RecipeError(flag, f"{data} has no column '{col}' ({field} of the "
                                  f"run's recipe; it has {', '.join(have)})",
                                  "rename the column or use a file in the training format")
        scan(task, src, field=flag, labeled=labeled)
        return str(src.path)
    return data


def eval_command(run_dir: str, checkpoint: Optional[str], data: Optional[str], nproc: int,
                 console: Console, overrides: list[str] = ()) -> int:
    rd, plan = open_run(run_dir)
    plan = with_decisions(plan, list(overrides))
    chosen = pick_checkpoint(rd, checkpoint)
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
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = [str(rd.root), name, *(["--checkpoint", chosen] if chosen else []),
            *(["--data", data] if data else []), *(f"--set={o}" for o in overrides)]
    if nproc == 1:
        cmd = [sys.executable, "-m", "launcher.engine.eval_main", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "launcher.engine.eval_main", *args]
    console.print(f"evaluating {chosen or 'final'} of {rd.root} on {data or stem} "
                  f"({nproc} process(es))", highlight=False)
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


def predict_command(run_dir: str, checkpoint: Optional[str], texts: list[str],
                    pair: Optional[str], file: Optional[str], console: Console,
                    overrides: list[str] = ()) -> int:
    rd, plan = open_run(run_dir)
    plan = with_decisions(plan, list(overrides))
    chosen = pick_checkpoint(rd, checkpoint)
    task = tasks.for_recipe(plan.recipe)
    if bool(texts) == bool(file):
        raise RecipeError("--text", "give either --text (one or more) or --file",
                          "e.g. --text 'Striker scores in cup final'")
    if file is not None:
        src = sources.resolve(file, config=None, split="train")
        if not src.is_local or not src.path.is_file():
            raise RecipeError("--file", f"{file} is not a local data file", "fix the path")
        check_data(plan, file, "--file")
        rows = list(sources.open_stream(src, streaming=True))
    else:
        if task.cols.pair is not None and pair is None:
            what = "context" if task.type == "question_answering" else "second text"
            raise RecipeError("--pair", f"this {task.type} model reads a {what} "
                              f"({task.cols.pair}) as well", f"pass --pair '<{what}>'")
        rows = []
        for text in texts:
            row = {task.cols.text: text.split() if task.type == "token_classification" else text}
            if task.cols.pair is not None:
                row[task.cols.pair] = pair
            rows.append(row)
    device.refuse_here(plan, 1)
    from launcher.engine.eval_main import predict

    try:
        for out in predict(rd.root, chosen, rows, list(overrides)):
            # default=str: a parquet date or decimal column is printed, not a traceback.
            sys.stdout.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
