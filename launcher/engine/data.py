"""Streams of tokenized batches: training split per example, evaluation split per batch.

Training is one global stream per epoch, the same for every world size: the non-empty rows
in file order, cut into global micro batches of world x micro_batch examples, of which rank r
takes every world-th example starting at r. So optimizer step s always trains on examples
[s x global_batch, (s+1) x global_batch) of the epoch, whatever the world size, and the
stream's position after a step is one number every rank knows without talking to the
others: the row just past that step's last example. A resumed run (on any world size) skips
to it on HF's arrow path without encoding a row, and reads the very next example.

Every rank reads every row but encodes only its own, in the DataLoader's workers (worker w
encodes global micro batches w, w + workers, ...; the DataLoader hands them back in order).

Evaluation is exact at any world size: every rank reads the whole eval stream, cuts it into
batches of eval_micro_batch examples in file order and keeps batch b when b % world == rank.
So every example is scored exactly once, each batch holds the same examples (and gives the
same logits) whatever the world size, and each rank knows how many batches the others have --
which lets sharded models (ZeRO-3, FSDP) run the same number of forwards on every rank.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from launcher import sources
from launcher.engine import packing
from launcher.plan.build import Plan
from launcher.tasks import Task


class DataError(ValueError):
    """The data ran out or cannot be read as the plan expects."""


@dataclass
class Position:
    """Where the training stream stands at a step boundary; saved in every checkpoint."""

    epoch: int = 0
    row: int = 0       # rows of this epoch's file read, empty ones included
    examples: int = 0  # non-empty examples trained on this epoch, over all ranks

    def to_dict(self) -> dict:
        return asdict(self)


def open_source(name: str, split: str, plan: Plan):
    d = plan.recipe.data
    src = sources.resolve(name, config=d.dataset_config, split=split)
    return sources.open_stream(src, streaming=d.streaming)


def _worker_init(_: int) -> None:
    # torchrun stops a rank by signalling its whole process group, DataLoader workers
    # included; a preemption signal is the rank's to handle (it finishes the step and saves,
    # still reading from its workers), so the workers ignore it. They end with the rank.
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _loader_generator() -> torch.Generator:
    # A DataLoader draws its workers' base seed from the global RNG when none is given; a
    # private generator keeps the dropout stream the same whether or not a run was resumed.
    return torch.Generator().manual_seed(0)


class TrainEpoch(IterableDataset):
    """This rank's micro batches of one epoch, from a row on; each batch carries `row_end`,
    the row just past the last example of its global micro batch."""

    def __init__(self, rows: Any, task: Task, tokenizer: Any, micro: int, rank: int, world: int,
                 start_row: int, max_batches: Optional[int], pack_to: Optional[int] = None,
                 pack_rows_multiple: int = 1):
        self.rows, self.task, self.tokenizer, self.pack_to = rows, task, tokenizer, pack_to
        self.pack_rows_multiple = pack_rows_multiple
        self.micro, self.rank, self.world = micro, rank, world
        self.start_row, self.max_batches = start_row, max_batches

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        width = self.world * self.micro
        chunk: list[tuple[int, dict]] = []
        made = 0
        for index, row in enumerate(sources.iter_rows(self.rows, self.start_row),
                                    start=self.start_row):
            if self.task.is_empty(row):
                continue
            chunk.append((index, row))
            if len(chunk) < width:
                continue
            if made % workers == worker:
                mine = chunk[self.rank::self.world]
                batch = self.task.encode([r for _, r in mine], self.tokenizer,
                                         indices=[i for i, _ in mine])
                if self.pack_to:
                    batch["inputs"] = packing.pack(batch["inputs"], self.pack_to,
                                                   self.pack_rows_multiple)
                batch["row_end"] = index + 1
                yield batch
            made, chunk = made + 1, []
            if made == self.max_batches:
                return
        # A last global micro batch short of `width` is dropped on every rank alike.


def train_batches(plan: Plan, task: Task, tokenizer: Any, rank: int, world: int,
                  start: Optional[Position] = None) -> Iterator[tuple[Position, dict]]:
    """(position after this micro batch, micro batch) forever. An epoch of known length ends
    after exactly steps_per_epoch x global_batch examples, so ranks never wait on each other."""
    d = plan.recipe.data
    pos = start or Position()  # positions are replaced, never changed in place
    width = world * plan.micro_batch
    if pos.examples % width:
        raise DataError(f"the checkpoint stopped {pos.examples} examples into epoch "
                        f"{pos.epoch}, not a multiple of world size x micro batch ({width})")
    per_epoch = None if plan.steps_per_epoch is None else plan.steps_per_epoch * plan.global_batch
    rows = open_source(d.train, d.train_split, plan)
    while True:
        left = None if per_epoch is None else (per_epoch - pos.examples) // width
        if left == 0:
            pos = Position(epoch=pos.epoch + 1)
            continue
        epoch = TrainEpoch(rows, task, tokenizer, plan.micro_batch, rank, world,
                           start_row=pos.row, max_batches=left,
                           pack_to=d.max_length if d.packing else None,
                           # compiled: a handful of row counts, so a handful of graphs
                           pack_rows_multiple=4 if plan.recipe.scale.compile != "off" else 1)
        taken = 0
        # Pinned batches let the host-to-GPU copies (non_blocking) overlap the step.
        for batch in DataLoader(epoch, batch_size=None, num_workers=d.num_workers,
                                generator=_loader_generator(), worker_init_fn=_worker_init,
                                pin_memory=torch.cuda.is_available()):
            taken += 1
            pos = Position(pos.epoch, batch.pop("row_end"), pos.examples + width)
            yield pos, batch
        if taken == 0 and pos.row == 0:
            raise DataError(f"rank {rank} read no full batch of {plan.micro_batch} from {d.train}")
        pos = Position(epoch=pos.epoch + 1)


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
        for index, row in enumerate(sources.iter_rows(self.rows)):
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
    return DataLoader(shard, batch_size=None, num_workers=d.num_workers,
                      generator=_loader_generator(), worker_init_fn=_worker_init)
