"""`launcher predict RUN_DIR --text ... | --file F`: a run's predictions as JSON lines."""

from __future__ import annotations

import json
import os
import sys

from rich.console import Console

from launcher import sources, tasks
from launcher.engine import device
from launcher.commands.trained import check_data, pick_checkpoint
from launcher.errors import RecipeError
from launcher.plan.decisions import with_decisions
from launcher.run_dir import open_run


def main(args, console: Console) -> int:
    rd, plan = open_run(args.run_dir)
    texts, pair, file, overrides = args.text, args.pair, args.file, list(args.overrides)
    plan = with_decisions(plan, overrides)
    chosen = pick_checkpoint(rd, args.checkpoint)
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
        for out in predict(rd.root, chosen, rows, overrides):
            # default=str: a parquet date or decimal column is printed, not a traceback.
            sys.stdout.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
