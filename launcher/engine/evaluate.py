"""Evaluation: every example scored once on one rank, records gathered to rank 0 in file order.

Each rank scores its own batches and turns the outputs into per-example records (prediction,
confidence, loss); rank 0 gathers them, sorts them by their position in the eval file and
computes the metrics from the whole list, so the numbers cannot depend on the world size.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from launcher.tasks import Task


def score(model: Any, loader: Any, task: Task, device: torch.device,
          autocast: Callable[[], Any] = contextlib.nullcontext, *, world: int = 1,
          lockstep: bool = False, full: bool = False) -> tuple[list[dict], int]:
    """(this rank's records, empty rows skipped). With `lockstep`, every rank runs the same
    number of forwards (sharded models gather weights inside forward): a rank with fewer
    batches repeats one and drops the result."""
    records: list[dict] = []
    total, skipped, forwards = 0, 0, 0
    spare: Optional[dict] = None
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast():
        for item in loader:
            if "end" in item:
                total, skipped = item["end"], item["skipped"]
                continue
            if "spare" in item:
                spare = item["spare"]
                continue
            records += task.records(_forward(model, item, device), item, full=full)
            forwards += 1
            spare = spare or item
        if lockstep and spare is not None:
            for _ in range(-(-total // world) - forwards):
                _forward(model, spare, device)
    model.train(was_training)
    return records, skipped


def _forward(model: Any, batch: dict, device: torch.device) -> Any:
    inputs = {k: v.to(device) for k, v in batch["inputs"].items() if k != "labels"}
    return model(**inputs)


def gather(records: list[dict], world: int) -> Optional[list[dict]]:
    """All ranks' records on rank 0, sorted by eval-file position; None on other ranks."""
    if world > 1:
        parts: Optional[list] = [None] * world if dist.get_rank() == 0 else None
        dist.gather_object(records, parts, dst=0)
        if parts is None:
            return None
        records = [r for part in parts for r in part]
    return sorted(records, key=lambda r: r["index"])


def evaluate(*, plan: Any, task: Task, tokenizer: Any, model: Any, device: torch.device,
             autocast: Callable[[], Any], rank: int, world: int, lockstep: bool, step: int,
             out_dir: Path, data_file: Optional[str] = None) -> Optional[dict]:
    """Score the eval set (or `data_file`) on every rank; rank 0 writes out_dir and returns
    the metrics, other ranks return None."""
    from launcher.engine import data, report

    loader = data.eval_loader(plan, task, tokenizer, rank, world, data_file)
    if loader is None:
        return None
    records, skipped = score(model, loader, task, device, autocast, world=world,
                             lockstep=lockstep)
    records = gather(records, world)
    if records is None:
        return None
    metrics = {"step": step, "examples": len(records), "skipped_empty": skipped,
               **task.metrics(records)}
    report.write_eval(out_dir, task, metrics, records, plan.recipe.eval.errors_kept)
    return metrics
