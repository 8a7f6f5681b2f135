"""Evaluate or predict with a finished run's model: what a user does right after training.

`launcher eval` runs `run_eval` here, in its own process or under torchrun (the same exact
evaluation as during training, so the numbers match at any process count); `launcher predict`
runs `predict` in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from launcher import tasks
from launcher.engine import device
from launcher.engine.evaluate import evaluate, score
from launcher.engine.model import build_model, build_tokenizer, load_trained
from launcher.checkpoint.sharded import model_weights
from launcher.plan.build import Plan
from launcher.plan.decisions import with_decisions
from launcher.run_dir import RunDir


def load(run_dir: Path, checkpoint: Optional[str],
         overrides: list[str] = ()) -> tuple[Plan, Any, Any, Any]:
    """(plan, task, tokenizer, model) of a run, from final/ or from one checkpoint's weights;
    `overrides` change only how outputs become answers (plan/decisions.py)."""
    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    rd = RunDir(run_dir)
    plan = with_decisions(Plan.from_json((rd.plan / "plan.json").read_text()), list(overrides))
    task = tasks.for_recipe(plan.recipe)
    weights = None if checkpoint is None else model_weights(rd.checkpoints / checkpoint)
    if rd.final.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(rd.final)
        return plan, task, tokenizer, load_trained(rd.final, task, weights)
    # A run cut off before its export: the recipe's model, fresh, then the checkpoint's weights.
    cfg = dataclasses.replace(plan.recipe.model, pretrained=False)
    model = build_model(cfg, task)
    model.load_state_dict(weights, strict=False)
    return plan, task, build_tokenizer(cfg), model


def _device(plan: Plan) -> torch.device:
    """The plan's resolved scale.device, as training had it: a cpu plan evaluates on CPU where
    a GPU is visible too, and a cuda plan never falls back to CPU (engine/device.py refuses)."""
    if plan.device != "cuda":
        return torch.device("cpu")
    device.check(plan, local=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def _autocast(plan: Plan, device: torch.device):
    precision = plan.recipe.scale.precision
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return lambda: torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext


def run_eval(run_dir: Path, checkpoint: Optional[str], data_file: Optional[str],
             name: str, overrides: list[str] = (), world: Optional[int] = None) -> Optional[dict]:
    """One rank's part of an evaluation (world None: torchrun's WORLD_SIZE, else 1); with world
    1 nothing of torch.distributed is initialised, so `launcher eval` calls it in its own process."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    plan = Plan.from_json((RunDir(run_dir).plan / "plan.json").read_text())
    if world > 1:
        dist.init_process_group("nccl" if plan.device == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    # The group is taken down on a failure only: a finished rank leaves by os._exit (leave in
    # engine/main.py), since tearing gloo down from here can hang it (main.py, _FINISHED).
    try:
        where = _device(plan)
        plan, task, tokenizer, model = load(run_dir, checkpoint, overrides)
        model.to(where)
        step = int(checkpoint.split("-")[-1]) if checkpoint else -1
        return evaluate(plan=plan, task=task, tokenizer=tokenizer, model=model, device=where,
                        autocast=_autocast(plan, where), rank=rank, world=world,
                        lockstep=False, step=step, out_dir=RunDir(run_dir).eval / name,
                        data_file=data_file)
    except BaseException:
        if world > 1:
            dist.destroy_process_group()
        raise


def predict(run_dir: Path, checkpoint: Optional[str], rows: list[dict],
            overrides: list[str] = ()) -> list[dict]:
    """Each input row as it came, with `id` (the row's id column, else its row number, 1 =
    the first) and what the task predicts (`predicted`, `score`/`scores`) added."""
    from launcher.engine.data import EvalShard

    plan, task, tokenizer, model = load(run_dir, checkpoint, overrides)
    where = _device(plan)
    model.to(where)
    shard = EvalShard(rows, task, tokenizer, plan.eval_micro_batch, 0, 1, labeled=False)
    records, _ = score(model, iter(shard), task, where, _autocast(plan, where), full=True)
    by_index = {r["index"]: r for r in records}
    id_column = task.cols.id or "id"
    out = []
    for index, row in enumerate(rows):
        own = row.get(id_column)
        line = {"id": None, **row}  # id first, the row's own columns kept as they are
        line["id"] = own if own is not None else index + 1
        if index in by_index:
            line.update(task.prediction(by_index[index]))
        else:  # an empty text: nothing to predict from
            line.update(predicted=None, skipped="empty text")
        out.append(line)
    return out


def main(argv: list[str]) -> int:
    """Under torchrun: python -m launcher.engine.eval_main RUN_DIR NAME [--checkpoint] [--data]"""
    parser = argparse.ArgumentParser(prog="python -m launcher.engine.eval_main")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name")
    parser.add_argument("--checkpoint")
    parser.add_argument("--data")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    run_eval(args.run_dir, args.checkpoint, args.data, args.name, args.set)
    return 0


if __name__ == "__main__":
    from launcher.engine.main import leave

    leave(main(sys.argv[1:]))  # an exception leaves the normal way, traceback and all
