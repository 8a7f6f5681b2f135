"""Streams of tokenized batches: training split per rank, evaluation split per batch.

Training rows are read as an HF `IterableDataset`, split per rank with `split_dataset_by_node`
(whole shards per rank when the file count allows, else every world-size-th row), and encoded
per micro batch by the task, in the DataLoader's workers.

Evaluation is exact at any world size: every rank reads the whole eval stream, cuts it into
batches of eval_micro_batch examples in file order and keeps batch b when b % world == rank.
So every example is scored exactly once, each batch holds the same examples (and gives the
same logits) whatever the world size, and each rank knows how many batches the others have --
which lets sharded models (ZeRO-3, FSDP) run the same number of forwards on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from launcher import sources
from launcher.plan.build import Plan
from launcher.tasks import Task


class DataError(ValueError):
    """The data ran out or cannot be read as the plan expects."""


@dataclass
class TrainCollate:
    """Raw rows -> model inputs; a picklable object so DataLoader workers can run it."""

    task: Task
    tokenizer: Any

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        # Row positions are not known after the per-rank split; errors name the row's id.
        return self.task.encode(rows, self.tokenizer, indices=[-1] * len(rows))


@dataclass
class NonEmpty:
    task: Task

    def __call__(self, row: dict) -> bool:
        return not self.task.is_empty(row)


def open_source(name: str, split: str, plan: Plan):
    d = plan.recipe.data
    src = sources.resolve(name, config=d.dataset_config, split=split)
    return sources.open_stream(src, streaming=d.streaming)


def train_batches(plan: Plan, task: Task, tokenizer: Any, rank: int,
                  world: int) -> Iterator[tuple[int, dict]]:
    """(epoch, micro batch) forever; an epoch of known length ends after exactly
    steps_per_epoch x grad_accum micro batches on every rank, so ranks never wait on each other."""
    d = plan.recipe.data
    ds = open_source(d.train, d.train_split, plan).filter(NonEmpty(task))
    ds = split_dataset_by_node(ds, rank=rank, world_size=world)
    per_epoch = None if plan.steps_per_epoch is None else plan.steps_per_epoch * plan.grad_accum
    collate = TrainCollate(task, tokenizer)
    epoch = 0
    while True:
        ds.set_epoch(epoch)
        taken = 0
        for batch in DataLoader(ds, batch_size=plan.micro_batch, collate_fn=collate,
                                num_workers=d.num_workers):
            if len(batch["ids"]) < plan.micro_batch:
                break  # a short tail batch would change the loss scale; drop it
            yield epoch, batch
            taken += 1
            if per_epoch is not None and taken == per_epoch:
                break
        if taken == 0:
            raise DataError(f"rank {rank} read no full batch of {plan.micro_batch} from {d.train}")
        epoch += 1


class EvalShard(IterableDataset):
    """This rank's eval batches, encoded, then one {'end': batches, 'skipped': empty rows}.

    A rank that owns no batch (fewer batches than ranks) also gets {'spare': batch 0}, so a
    sharded model still has something to run its forwards on.
    """

    def __init__(self, rows: Any, task: Task, tokenizer: Any, batch_size: int, rank: int,
                 world: int, limit: Optional[int] = None, labeled: bool = True):
        self.rows, self.task, self.tokenizer = rows, task, tokenizer
        self.batch_size, self.rank, self.world, self.limit = batch_size, rank, world, limit
        self.labeled = labeled

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batch: list[tuple[int, dict]] = []
        first: list[tuple[int, dict]] = []
        count, skipped = 0, 0
        for index, row in enumerate(self.rows):
            if self.limit is not None and index >= self.limit:
                break
            if self.task.is_empty(row):
                skipped += 1
                continue
            batch.append((index, row))
            if len(batch) == self.batch_size:
                yield from self._emit(count, batch, worker, workers)
                first = first or batch
                count, batch = count + 1, []
        if batch:
            yield from self._emit(count, batch, worker, workers)
            first = first or batch
            count += 1
        if worker == 0:
            if self.rank >= count and first:
                yield {"spare": self._encode(first)}
            yield {"end": count, "skipped": skipped}

    def _emit(self, b: int, batch: list[tuple[int, dict]], worker: int, workers: int):
        if b % self.world == self.rank and (b // self.world) % workers == worker:
            yield self._encode(batch)

    def _encode(self, batch: list[tuple[int, dict]]) -> dict:
        return self.task.encode([r for _, r in batch], self.tokenizer,
                                indices=[i for i, _ in batch], labeled=self.labeled)


def eval_loader(plan: Plan, task: Task, tokenizer: Any, rank: int, world: int,
                data: Optional[str] = None) -> Optional[DataLoader]:
    if not plan.has_eval and data is None:
        return None
    d = plan.recipe.data
    if data is not None:
        rows = sources.open_stream(sources.resolve(data, config=d.dataset_config,
                                                   split=d.eval_split), streaming=True)
    else:
        rows = open_source(d.eval if d.eval is not None else d.train, d.eval_split, plan)
    shard = EvalShard(rows, task, tokenizer, plan.eval_micro_batch, rank, world,
                      limit=plan.recipe.eval.max_examples)
    return DataLoader(shard, batch_size=None, num_workers=d.num_workers)
