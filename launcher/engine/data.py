"""Tokenized batches: training in each epoch's order, evaluation split per batch.

Training is one global order per epoch, the same for every world size. Prepared data (local
files, hub splits without data.streaming) is the split as memory-mapped Arrow with the list of
its non-empty rows, found once at preparation time; epoch e's order is a permutation of those
rows seeded by (run.seed, e) (file order with data.shuffle=false). The order is cut into global
micro batches of world x micro_batch examples, of which rank r takes every world-th example
starting at r, and reads just those rows by index. So optimizer step s always trains on
examples [s x global_batch, (s+1) x global_batch) of the epoch's order, whatever the world
size, and the position after a step is (epoch, examples consumed), which every rank knows
without talking to the others. A resume (on any world size) recomputes the epoch's order and
goes on from that example: nothing before it is read.

Under a token budget (scale.tokens_per_step) the epoch's order is cut into steps and micro
batches by token counts instead (engine/budget.py), the same at any world size; positions
still count examples.

A stream (data.streaming=true) with data.shuffle=false is read in file order; every rank
reads every row but encodes only its own, and a resume skips to the row just past the saved
step on HF's arrow path. Window-shuffled (data.shuffle=true), its shards come in an order seeded
by (run.seed, epoch); where it has at least world x workers shards and the epoch's length is
known, each rank and DataLoader worker (a "reader") reads only its own shards of that order and
fills its own micro batches (see ShardedEpoch); otherwise every reader reads the whole stream,
windowed, and keeps its share of each global micro batch (WindowedEpoch). The rank log says
which. A sharded position records each reader's current window start and offset
(Position.streams, joined over the ranks at a checkpoint): a resume on the same split re-reads
only those windows; on another split mid-epoch every reader reads all the old readers' streams
from there, merged in the old global order, and keeps its share (MergedEpoch).

DataLoader worker w of a rank encodes global micro batches w, w + workers, ... (the DataLoader
hands them back in order).

Evaluation is exact at any world size: the eval examples (all non-empty rows, or a sample of
eval.max_examples of them seeded by run.seed, in file order; a stream: its first rows) are cut into batches of
eval_micro_batch and rank r scores batch b when b % world == r. So every example is scored
exactly once, each batch holds the same examples (and gives the same logits) whatever the
world size, and each rank knows how many batches the others have -- which lets sharded models
(ZeRO-3, FSDP) run the same number of forwards on every rank.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from launcher import sources
from launcher.engine import budget, packing
from launcher.plan.build import Plan
from launcher.tasks import Task


log = logging.getLogger("launcher.engine")


class DataError(ValueError):
    """The data ran out or cannot be read as the plan expects."""


@dataclass
class Position:
    """Where the training stream stands at a step boundary; saved in every checkpoint."""

    epoch: int = 0
    row: int = 0       # file-order streams: rows of this epoch's file read, empty ones included
    examples: int = 0  # examples of this epoch's order trained on, over all ranks
    window: int = 0    # window-shuffled streams: the window the next example comes from
    offset: int = 0    # ... and how many of that window's examples were trained on
    readers: int = 0   # sharded streams: the readers (ranks x workers) splitting its shards
    # ... where each reader stands: streams[rank][worker] = [pass, shard, row, window, offset],
    # its current window's start (pass over its shards, index into its shard list, row in that
    # shard), the window's index in the pass and how many of its examples were taken; a
    # rank's own position knows only its own readers (None for the others') until the
    # checkpoint joins them (joined_position). None: not recorded (older checkpoints).
    streams: Optional[list] = None
    micro: int = 0     # ... and the micro batch size they were read in

    def to_dict(self) -> dict:
        saved = asdict(self)
        for key in ("readers", "streams", "micro"):
            if not saved[key]:
                del saved[key]  # as checkpoints of unsharded streams have always read
        return saved


def open_source(name: str, split: str, plan: Plan):
    d = plan.recipe.data
    src = sources.resolve(name, config=d.dataset_config, split=split)
    return sources.open_stream(src, streaming=d.streaming)


def prepare(name: str, split: str, plan: Plan, task: Task) -> sources.Prepared:
    d = plan.recipe.data
    src = sources.resolve(name, config=d.dataset_config, split=split)
    text = [c for c in (task.cols.text, task.cols.pair) if c is not None]
    return sources.prepare(src, text, task.is_empty)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Positions 0..n-1 in epoch `epoch`'s order: the same on every rank and world size."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(n)


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


def _rank_share(epoch: Any, chunk: list[tuple[int, dict]]) -> dict:
    """This rank's examples of a global micro batch of (row index, row), encoded (and packed):
    every world-th from the rank's own, so step s trains the same examples at any world size."""
    mine = chunk[epoch.rank::epoch.world]
    batch = epoch.task.encode([r for _, r in mine], epoch.tokenizer, indices=[i for i, _ in mine])
    if epoch.pack_to:
        batch["inputs"] = packing.pack(batch["inputs"], epoch.pack_to, epoch.pack_rows_multiple)
    return batch


def _dealt(epoch: Any, examples: Iterator[tuple[int, dict]], read: list[int],
           ended: Callable[[], dict]) -> Iterator[dict]:
    """This DataLoader worker's global micro batches (world x micro examples each; worker w
    of n makes micro batches w, w + n, ...), at most epoch.max_batches in all: this rank's
    share of each, encoded, with what `ended()` says of where it ended and `decoded`, the
    rows read for it (`read[0]` counts them as `examples` goes)."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    width = epoch.world * epoch.micro
    chunk: list[tuple[int, dict]] = []
    made, counted = 0, 0
    for example in examples:
        chunk.append(example)
        if len(chunk) < width:
            continue
        if made % workers == worker:
            batch = _rank_share(epoch, chunk)
            batch.update(ended())
            batch["decoded"], counted = read[0] - counted, read[0]
            yield batch
        made, chunk = made + 1, []
        if made == epoch.max_batches:
            return
    # A last global micro batch short of `width` is dropped on every rank alike.


class TrainEpoch(IterableDataset):
    """A stream: this rank's micro batches of one epoch, from a row on; each batch carries
    `row_end`, the row just past the last example of its global micro batch, and `decoded`,
    the rows this worker turned into Python for it (every row: it reads them all)."""

    def __init__(self, rows: Any, task: Task, tokenizer: Any, micro: int, rank: int, world: int,
                 start_row: int, max_batches: Optional[int], pack_to: Optional[int] = None,
                 pack_rows_multiple: int = 1):
        self.rows, self.task, self.tokenizer, self.pack_to = rows, task, tokenizer, pack_to
        self.pack_rows_multiple = pack_rows_multiple
        self.micro, self.rank, self.world = micro, rank, world
        self.start_row, self.max_batches = start_row, max_batches

    def __iter__(self):
        read, end = [0], [self.start_row]

        def examples() -> Iterator[tuple[int, dict]]:
            for index, row in enumerate(sources.iter_rows(self.rows, self.start_row),
                                        start=self.start_row):
                read[0] += 1
                if not self.task.is_empty(row):
                    end[0] = index + 1
                    yield index, row
        return _dealt(self, examples(), read, lambda: {"row_end": end[0]})


class IndexedEpoch(IterableDataset):
    """Prepared data: this rank's micro batches of one epoch. `order` holds the row indices
    of the global micro batches still to train, in order; this rank reads only its own rows
    and says how many in each batch's `decoded`."""

    def __init__(self, prepared: sources.Prepared, order: np.ndarray, task: Task,
                 tokenizer: Any, micro: int, rank: int, world: int,
                 pack_to: Optional[int] = None, pack_rows_multiple: int = 1):
        self.prepared, self.order, self.task, self.tokenizer = prepared, order, task, tokenizer
        self.micro, self.rank, self.world = micro, rank, world
        self.pack_to, self.pack_rows_multiple = pack_to, pack_rows_multiple

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        width = self.world * self.micro
        for g in range(worker, len(self.order) // width, workers):
            mine = self.order[g * width + self.rank:(g + 1) * width:self.world].tolist()
            rows = self.prepared.read(mine)
            batch = self.task.encode(rows, self.tokenizer, indices=mine)
            if self.pack_to:
                batch["inputs"] = packing.pack(batch["inputs"], self.pack_to,
                                               self.pack_rows_multiple)
            batch["decoded"] = len(rows)
            yield batch


def _as_made(batch: dict) -> dict:
    """A batch as the dataset made it. Without it a DataLoader with batch_size=None hands
    every batch to torch's default_convert, which walks it element by element in Python:
    a QA batch's token offsets alone are tens of thousands of calls, 30 ms a micro batch on
    the rank's own thread when data.num_workers is 0 (benchmarks/NOTES.md). The datasets
    here make tensors and Python values only, nothing for it to convert."""
    return batch


def _loader(epoch: IterableDataset, plan: Plan) -> DataLoader:
    # Pinned batches let the host-to-GPU copies (non_blocking) overlap the step.
    return DataLoader(epoch, batch_size=None, collate_fn=_as_made,
                      num_workers=plan.recipe.data.num_workers,
                      generator=_loader_generator(), worker_init_fn=_worker_init,
                      pin_memory=torch.cuda.is_available())


def _pack_args(plan: Plan) -> dict:
    d = plan.recipe.data
    # compiled: a handful of row counts, so a handful of graphs
    return {"pack_to": d.max_length if d.packing else None,
            "pack_rows_multiple": 4 if plan.recipe.scale.compile != "off" else 1}


def train_batches(plan: Plan, task: Task, tokenizer: Any, rank: int, world: int,
                  start: Optional[Position] = None) -> Iterator[tuple[Position, dict]]:
    """(position after this micro batch, micro batch) forever. An epoch of known length ends
    after exactly steps_per_epoch x global_batch examples, so ranks never wait on each other."""
    pos = start or Position()  # positions are replaced, never changed in place
    if plan.tokens_per_step:
        return _first_timed(_budget_batches(plan, task, tokenizer, rank, world, pos))
    width = world * plan.micro_batch
    if pos.examples % width:
        raise DataError(f"the checkpoint stopped {pos.examples} examples into epoch "
                        f"{pos.epoch}, not a multiple of world size x micro batch ({width})")
    if plan.recipe.data.streaming:
        if plan.recipe.data.shuffle:
            return _first_timed(_windowed_batches(plan, task, tokenizer, rank, world, pos))
        return _first_timed(_streamed_batches(plan, task, tokenizer, rank, world, pos))
    return _first_timed(_prepared_batches(plan, task, tokenizer, rank, world, pos))


def _first_timed(batches: Iterator) -> Iterator:
    """Log how long the first micro batch took (preparing, opening, skipping to the position):
    benchmarks/NOTES.md reads it."""
    began = time.perf_counter()
    first = next(batches)
    log.info("data: first micro batch after %.2f s", time.perf_counter() - began)
    yield first
    yield from batches


def _prepared_batches(plan: Plan, task: Task, tokenizer: Any, rank: int, world: int,
                      pos: Position) -> Iterator[tuple[Position, dict]]:
    d, seed = plan.recipe.data, plan.recipe.run.seed
    width = world * plan.micro_batch
    prepared = prepare(d.train, d.train_split, plan, task)
    n = len(prepared.keep)
    per_epoch = (plan.steps_per_epoch * plan.global_batch if plan.steps_per_epoch is not None
                 else n // width * width)
    if per_epoch > n or per_epoch == 0:
        raise DataError(f"an epoch needs {max(per_epoch, width)} examples but {d.train} has "
                        f"{n} non-empty rows")
    log.info("data: %s prepared, %d rows of which %d non-empty; %d examples an epoch, %s; "
             "rank %d reads its %d of every %d by index", d.train, len(prepared.rows), n,
             per_epoch, "shuffled by (run.seed, epoch)" if d.shuffle else "in file order",
             rank, plan.micro_batch, width)
    while True:
        if pos.examples >= per_epoch:
            pos = Position(epoch=pos.epoch + 1)
        first = pos.examples
        order = prepared.keep[epoch_order(n, seed, pos.epoch, d.shuffle)[first:per_epoch]]
        epoch = IndexedEpoch(prepared, np.asarray(order), task, tokenizer, plan.micro_batch,
                             rank, world, **_pack_args(plan))
        decoded = 0
        for batch in _loader(epoch, plan):
            decoded += batch.pop("decoded")
            pos = Position(pos.epoch, 0, pos.examples + width)
            if pos.examples == per_epoch:
                # Said before the epoch's last batch is handed over: a run may end on it.
                log.info("data: epoch %d: this rank decoded %d rows for %d examples of its "
                         "own (the epoch's examples %d to %d, over %d ranks)", pos.epoch,
                         decoded, (per_epoch - first) // world, first, per_epoch, world)
            yield pos, batch


class BudgetEpoch(IterableDataset):
    """Prepared data under a token budget (engine/budget.py): from position `start` of the
    epoch's `order` (row indices, with each example's tokens in `lengths`), one item per
    optimizer step: this rank's micro batches of it, `forwards` of them (the zero-weight ones
    flagged `pad`), and `examples_end`, the epoch's position after the step."""

    def __init__(self, prepared: sources.Prepared, order: np.ndarray, lengths: np.ndarray,
                 start: int, task: Task, tokenizer: Any, plan: Plan, rank: int, world: int):
        self.prepared, self.order, self.lengths, self.start = prepared, order, lengths, start
        self.task, self.tokenizer, self.rank, self.world = task, tokenizer, rank, world
        d = plan.recipe.data
        self.budget, self.micro_tokens = plan.tokens_per_step, plan.micro_tokens
        self.pad_multiple = d.pad_to_multiple_of or 1
        pack = _pack_args(plan)
        self.pack_to, self.pack_rows_multiple = pack["pack_to"], pack["pack_rows_multiple"]

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        ends = budget.step_ends(self.lengths, self.start, self.budget)
        for s in range(worker, len(ends), workers):
            begin, end = (ends[s - 1] if s else self.start), ends[s]
            step = self.order[begin:end].tolist()
            groups = budget.micro_batches(self.lengths[begin:end].tolist(), self.micro_tokens,
                                          self.pad_multiple, self.pack_to,
                                          self.pack_rows_multiple)
            mine = groups[self.rank::self.world]
            micro, decoded = [], 0
            for group in mine:
                rows = [step[i] for i in group]
                micro.append(self._encode(rows))
                decoded += len(rows)
            for _ in range(budget.forwards(len(groups), self.world) - len(mine)):
                # Zero weight: the step's shortest examples, so the forward costs little.
                pad = self._encode([step[i] for i in groups[-1]])
                pad.update(pad=True, ids=[], index=[])
                micro.append(pad)
            yield {"micro": micro, "examples_end": end, "decoded": decoded}

    def _encode(self, rows: list[int]) -> dict:
        batch = self.task.encode(self.prepared.read(rows), self.tokenizer, indices=rows)
        if self.pack_to:
            batch["inputs"] = packing.pack(batch["inputs"], self.pack_to,
                                           self.pack_rows_multiple)
        return batch


def _budget_batches(plan: Plan, task: Task, tokenizer: Any, rank: int, world: int,
                    pos: Position) -> Iterator[tuple[Position, dict]]:
    """(position after the step, micro batch) under a token budget; a step's last micro
    batch says `last`. Every example of an epoch is trained once (the last step may be
    short), and the position counts examples, as without a budget."""
    d, seed = plan.recipe.data, plan.recipe.run.seed
    prepared = prepare(d.train, d.train_split, plan, task)
    lengths = budget.lengths(prepared, task, tokenizer)
    n = len(prepared.keep)
    if n == 0:
        raise DataError(f"{d.train} has no non-empty rows")
    log.info("data: %s prepared, %d examples an epoch, %s; steps of up to %d real tokens in "
             "micro batches of up to %d tokens; rank %d reads its micro batches by index",
             d.train, n, "shuffled by (run.seed, epoch)" if d.shuffle else "in file order",
             plan.tokens_per_step, plan.micro_tokens, rank)
    while True:
        if pos.examples >= n:
            pos = Position(epoch=pos.epoch + 1)
        perm = epoch_order(n, seed, pos.epoch, d.shuffle)
        epoch = BudgetEpoch(prepared, np.asarray(prepared.keep)[perm], lengths[perm],
                            pos.examples, task, tokenizer, plan, rank, world)
        decoded, first = 0, pos.examples
        for step in _loader(epoch, plan):
            decoded += step["decoded"]
            pos = Position(pos.epoch, 0, step["examples_end"])
            if pos.examples == n:
                log.info("data: epoch %d: this rank decoded %d rows for its micro batches "
                         "of the epoch's examples %d to %d", pos.epoch, decoded, first, n)
            micro = step["micro"]
            for k, batch in enumerate(micro):
                batch["last"] = k == len(micro) - 1
                yield pos, batch


def _streamed_batches(plan: Plan, task: Task, tokenizer: Any, rank: int, world: int,
                      pos: Position) -> Iterator[tuple[Position, dict]]:
    d = plan.recipe.data
    width = world * plan.micro_batch
    per_epoch = None if plan.steps_per_epoch is None else plan.steps_per_epoch * plan.global_batch
    rows = open_source(d.train, d.train_split, plan)
    log.info("data: %s streamed in file order; every rank reads every row and encodes its "
             "%d of every %d", d.train, plan.micro_batch, width)
    while True:
        left = None if per_epoch is None else (per_epoch - pos.examples) // width
        if left == 0:
            pos = Position(epoch=pos.epoch + 1)
            continue
        epoch = TrainEpoch(rows, task, tokenizer, plan.micro_batch, rank, world,
                           start_row=pos.row, max_batches=left, **_pack_args(plan))
        taken, decoded = 0, 0
        for batch in _loader(epoch, plan):
            taken += 1
            decoded += batch.pop("decoded")
            pos = Position(pos.epoch, batch.pop("row_end"), pos.examples + width)
            if left is not None and taken == left:
                log.info("data: epoch %d: this rank decoded %d rows for %d examples of its "
                         "own", pos.epoch, decoded, left * plan.micro_batch)
            yield pos, batch
        if taken == 0 and pos.row == 0:
            raise DataError(f"rank {rank} read no full batch of {plan.micro_batch} from {d.train}")
        pos = Position(epoch=pos.epoch + 1)


_SHARD_STREAM = 0x5A4D  # the shard order's own seed stream, apart from the windows'


def epoch_stream(rows: Any, seed: int, epoch: int) -> Any:
    """A stream's shards in epoch `epoch`'s order (one shard: the stream itself)."""
    shards = rows.n_shards
    if shards < 2:
        return rows
    import datasets

    order = np.random.default_rng([seed, epoch, _SHARD_STREAM]).permutation(shards)
    return datasets.concatenate_datasets([rows.shard(shards, int(i)) for i in order])


def stream_readers(shards: int, world: int, workers: int, known_length: bool) -> int:
    """How many readers split a window-shuffled stream's shards: world x workers when it has at
    least that many shards and the epoch's length is known (so every rank can stop after the
    same number of micro batches without talking to the others); 0: every rank and worker
    reads the whole stream and keeps its share."""
    readers = world * max(workers, 1)
    return readers if readers > 1 and shards >= readers and known_length else 0


_SHARD_ROW_BITS = 32  # a sharded stream's example index: shard << 32 | row within the shard


def reader_shards(shards: int, seed: int, epoch: int, readers: int, reader: int) -> list[int]:
    """The shards reader `reader` of `readers` reads in epoch `epoch`: every readers-th of the
    epoch's shard order (the order epoch_stream concatenates)."""
    order = np.random.default_rng([seed, epoch, _SHARD_STREAM]).permutation(shards)
    return [int(i) for i in order[reader::readers]]


_START = [0, 0, 0, 0, 0]  # a reader's state at its epoch's start: pass 0, shard 0, row 0, ...


def reader_examples(rows: Any, task: Task, size: int, seed: int, epoch: int, readers: int,
                    reader: int, at: list[int], read: list[int]
                    ) -> Iterator[tuple[list[int], tuple[int, dict]]]:
    """(state after it, (index, example)) of one reader's own shards in epoch `epoch`, each
    window of `size` rows permuted by (seed, epoch, reader, pass, window), from state `at`
    ([pass, shard, row, window, offset]: see Position.streams) on. The rows before that
    window's start are skipped on HF's arrow path (none becomes a Python object); the window
    is read again, not tokenized, and permuted as before. A reader whose shards run out
    before the epoch's quota reads them again (the next pass, in other windows' orders), as
    sharded loaders do: shards differ in size. `read[0]` counts the rows read."""
    mine = reader_shards(rows.n_shards, seed, epoch, readers, reader)
    rerun, first_shard, first_row, window, offset = at
    batch = max(1, min(size, 1024))  # no more rows made Python than a window

    def indexed(k: int, j: int) -> Iterator[tuple[int, int, int, dict]]:
        for k in range(k, len(mine)):
            part = rows.shard(rows.n_shards, mine[k])
            for j, row in enumerate(sources.iter_rows(part, j, batch_size=batch), j):
                yield k, j, (mine[k] << _SHARD_ROW_BITS) | j, row
            j = 0

    while True:
        stream, found = indexed(first_shard, first_row), 0
        whole = (first_shard, first_row) == (0, 0)
        while True:
            chunk = list(itertools.islice(stream, size))
            if not chunk:
                break
            read[0] += len(chunk)
            start = chunk[0][:2]
            kept = [(i, row) for _, _, i, row in chunk if not task.is_empty(row)]
            found += len(kept)
            order = np.random.default_rng([seed, epoch, _SHARD_STREAM, reader, rerun, window]
                                          ).permutation(len(kept))
            for j in range(offset, len(kept)):
                yield [rerun, *start, window, j + 1], kept[order[j]]
            window, offset = window + 1, 0
        if found == 0 and whole:
            raise DataError(f"shards {mine} of the stream hold no example")
        rerun, first_shard, first_row, window, offset = rerun + 1, 0, 0, 0, 0


class ShardedEpoch(IterableDataset):
    """A sharded window-shuffled stream: rank `rank`'s micro batches `first` to `last` - 1 of
    one epoch. Micro batch j comes from DataLoader worker j - first (mod workers), which reads
    as reader rank x workers + j % workers: its own shards, its own micro batches j, j +
    workers, ... Each reader starts from its state in `streams` (its window's start); a
    reader with none there (a checkpoint that did not record it) reads its examples before
    `first` again, untokenized. Each batch carries `reader`: (worker, its state after it)."""

    def __init__(self, rows: Any, task: Task, tokenizer: Any, micro: int, rank: int,
                 workers: int, readers: int, size: int, seed: int, epoch: int, first: int,
                 last: int, streams: Optional[list] = None, pack_to: Optional[int] = None,
                 pack_rows_multiple: int = 1):
        self.rows, self.task, self.tokenizer = rows, task, tokenizer
        self.micro, self.rank, self.workers, self.readers = micro, rank, max(workers, 1), readers
        self.size, self.seed, self.epoch, self.first, self.last = size, seed, epoch, first, last
        self.streams = streams
        self.pack_to, self.pack_rows_multiple = pack_to, pack_rows_multiple

    def __iter__(self):
        info = get_worker_info()
        i = info.id if info else 0
        w = (self.first + i) % self.workers
        at = self.streams[self.rank][w] if self.streams else None
        read, counted = [0], 0
        examples = reader_examples(self.rows, self.task, self.size, self.seed, self.epoch,
                                   self.readers, self.rank * self.workers + w,
                                   at or _START, read)
        if at is None:  # this reader's batches before `first`, read again
            done = len(range(w, self.first, self.workers))
            examples = itertools.islice(examples, done * self.micro, None)
        for _ in range(self.first + i, self.last, self.workers):
            chunk = list(itertools.islice(examples, self.micro))
            batch = _rank_share(_Own(self), [example for _, example in chunk])
            batch["reader"] = (w, chunk[-1][0])
            batch["decoded"], counted = read[0] - counted, read[0]
            yield batch


class _Own:
    """_rank_share's view of a reader: the whole micro batch is its rank's."""

    def __init__(self, epoch: ShardedEpoch):
        self.rank, self.world, self.task, self.tokenizer = 0, 1, epoch.task, epoch.tokenizer
        self.pack_to, self.pack_rows_multiple = epoch.pack_to, epoch.pack_rows_multiple


def merged_examples(rows: Any, task: Task, size: int, seed: int, epoch: int,
                    streams: list, micro: int, examples: int, read: list[int]
                    ) -> Iterator[tuple[int, dict]]:
    """The rest of a sharded epoch, from the states its readers saved (`streams`, updated in
    place as they go), in the order its ranks would have trained it: global micro batch g
    is, rank by rank, the next `micro` examples of that rank's reader g % workers; from
    `examples` (consumed) on. The same order at any world size that reads it."""
    ranks, workers = len(streams), len(streams[0])
    live: dict[int, Iterator] = {}
    g, rest = divmod(examples, ranks * micro)
    q, e = divmod(rest, micro)
    while True:
        w = g % workers
        reader = q * workers + w
        if reader not in live:
            live[reader] = reader_examples(rows, task, size, seed, epoch, ranks * workers,
                                           reader, streams[q][w], read)
        for state, example in itertools.islice(live[reader], micro - e):
            streams[q][w] = state
            yield example
        q, e = q + 1, 0
        if q == ranks:
            g, q = g + 1, 0


class MergedEpoch(IterableDataset):
    """A sharded epoch resumed on another split (world x workers, or micro batch): this rank's
    micro batches of the rest of it, from every old reader's saved state (merged_examples);
    every worker of every rank reads all of it and keeps its share, like WindowedEpoch
    (holding a window of each old reader). Each batch carries `streams`: every old reader's
    state after its global micro batch."""

    def __init__(self, rows: Any, task: Task, tokenizer: Any, micro: int, rank: int,
                 world: int, size: int, seed: int, epoch: int, streams: list, old_micro: int,
                 examples: int, max_batches: int, pack_to: Optional[int] = None,
                 pack_rows_multiple: int = 1):
        self.rows, self.task, self.tokenizer = rows, task, tokenizer
        self.micro, self.rank, self.world = micro, rank, world
        self.size, self.seed, self.epoch = size, seed, epoch
        self.streams, self.old_micro, self.examples = streams, old_micro, examples
        self.max_batches = max_batches
        self.pack_to, self.pack_rows_multiple = pack_to, pack_rows_multiple

    def __iter__(self):
        streams, read = copy.deepcopy(self.streams), [0]
        examples = merged_examples(self.rows, self.task, self.size, self.seed, self.epoch,
                                   streams, self.old_micro, self.examples, read)
        return _dealt(self, examples, read, lambda: {"streams": copy.deepcopy(streams)})


def joined_position(pos: Position, shared: list) -> Position:
    """A sharded stream's position with every rank's readers: `shared` holds each rank's own
    `pos.streams` (rank q knows its row q). Where a reader's state is unknown (a resume from
    a checkpoint that did not record them, before that reader's first batch), the position
    records none, and a resume reads again up to it."""
    streams = [shared[q][q] for q in range(len(shared))]
    known = all(s is not None for row in streams for s in row)
    return dataclasses.replace(pos, streams=streams if known else None)


def needs_join(pos: Position) -> bool:
    """Whether a checkpoint of this position must gather the other ranks' reader states
    (the same answer on every rank: true on all of a sharded epoch's ranks but one alone)."""
    return bool(pos.streams) and any(row is None or None in row for row in pos.streams)


def windowed_examples(stream: Any, task: Task, size: int, seed: int, epoch: int,
                      window: int, offset: int, read: Optional[list[int]] = None
                      ) -> Iterator[tuple[int, int, int, dict]]:
    """(window, offset after it, row, example) from (window, offset) on: each window of `size`
    rows has its non-empty rows permuted by (seed, epoch, window). A resume skips whole
    windows on HF's arrow path and reads only its own window's rows again (none tokenized).
    `read[0]` counts the rows turned into Python."""
    rows = sources.iter_rows(stream, window * size)
    while True:
        chunk = list(itertools.islice(rows, size))
        if not chunk:
            return
        if read is not None:
            read[0] += len(chunk)
        kept = [(window * size + i, row) for i, row in enumerate(chunk) if not task.is_empty(row)]
        order = np.random.default_rng([seed, epoch, window]).permutation(len(kept))
        for j in range(offset, len(kept)):
            index, row = kept[order[j]]
            yield window, j + 1, index, row
        window, offset = window + 1, 0


class WindowedEpoch(IterableDataset):
    """A window-shuffled stream: this rank's micro batches of one epoch from (window, offset)
    on; each carries `window_end`/`offset_end`, where its global micro batch ended, and
    `decoded`, the rows this worker read for it."""

    def __init__(self, stream: Any, task: Task, tokenizer: Any, micro: int, rank: int,
                 world: int, size: int, seed: int, epoch: int, window: int, offset: int,
                 max_batches: Optional[int], pack_to: Optional[int] = None,
                 pack_rows_multiple: int = 1):
        self.stream, self.task, self.tokenizer = stream, task, tokenizer
        self.micro, self.rank, self.world = micro, rank, world
        self.size, self.seed, self.epoch = size, seed, epoch
        self.window, self.offset, self.max_batches = window, offset, max_batches
        self.pack_to, self.pack_rows_multiple = pack_to, pack_rows_multiple

    def __iter__(self):
        read, end = [0], {}

        def examples() -> Iterator[tuple[int, dict]]:
            for window, offset, index, row in windowed_examples(
                    self.stream, self.task, self.size, self.seed, self.epoch, self.window,
                    self.offset, read):
                end.update(window_end=window, offset_end=offset)
                yield index, row
        return _dealt(self, examples(), read, lambda: dict(end))


def _windowed_batches(plan: Plan, task: Task, tokenizer: Any, rank: int, world: int,
                      pos: Position) -> Iterator[tuple[Position, dict]]:
    d, seed = plan.recipe.data, plan.recipe.run.seed
    width = world * plan.micro_batch
    per_epoch = None if plan.steps_per_epoch is None else plan.steps_per_epoch * plan.global_batch
    rows = open_source(d.train, d.train_split, plan)
    workers = max(d.num_workers, 1)
    readers = stream_readers(rows.n_shards, world, d.num_workers, per_epoch is not None)
    saved = pos.streams if pos.examples and pos.readers else None
    if pos.examples and pos.readers and not saved and pos.readers != readers:
        raise DataError(_readers_refusal(pos, readers, rows.n_shards, world, workers))
    log.info("data: %s", reads_line(d.train, rows.n_shards, world, workers, rank, readers,
                                    d.shuffle_window, per_epoch is not None, plan.micro_batch))
    if pos.examples and readers and not pos.readers:
        log.info("data: epoch %d was read as a whole stream before its checkpoint: it goes on "
                 "so (exact at any world size); its own shards from epoch %d", pos.epoch,
                 pos.epoch + 1)
    same = saved and (len(saved), len(saved[0]), pos.micro) == (world, workers, plan.micro_batch)
    if saved and not same:
        log.info("data: epoch %d was split between %d ranks x %d workers (micro batch %d) before "
                 "its checkpoint: every worker of rank %d reads the rest of those %d readers' "
                 "shards, in the order they would have trained it, and keeps its own examples "
                 "(exact at any world size); its own shards from epoch %d", pos.epoch,
                 len(saved), len(saved[0]), pos.micro, rank, pos.readers, pos.epoch + 1)
    while True:
        left = None if per_epoch is None else (per_epoch - pos.examples) // width
        if left == 0:
            pos = Position(epoch=pos.epoch + 1, readers=readers)
            continue
        split = pos.readers if pos.examples else readers  # an epoch goes on as it began
        merged = bool(split and pos.examples and pos.streams and not same)
        if merged:
            epoch: IterableDataset = MergedEpoch(
                rows, task, tokenizer, plan.micro_batch, rank, world, d.shuffle_window, seed,
                pos.epoch, pos.streams, pos.micro, pos.examples, left, **_pack_args(plan))
        elif split:
            done = pos.examples // width
            streams = pos.streams if pos.examples else None
            # This rank's readers: where each stands (unknown: None, until its first batch).
            own = list(streams[rank] if streams else
                       [None] * workers if pos.examples else [_START] * workers)
            epoch = ShardedEpoch(
                rows, task, tokenizer, plan.micro_batch, rank, d.num_workers, split,
                d.shuffle_window, seed, pos.epoch, done, done + left, streams,
                **_pack_args(plan))
        else:
            epoch = WindowedEpoch(epoch_stream(rows, seed, pos.epoch), task, tokenizer,
                                  plan.micro_batch, rank, world, d.shuffle_window, seed,
                                  pos.epoch, pos.window, pos.offset, left, **_pack_args(plan))
        taken, decoded = 0, 0
        for batch in _loader(epoch, plan):
            taken += 1
            decoded += batch.pop("decoded")
            if merged:
                pos = Position(pos.epoch, 0, pos.examples + width, 0, 0, split,
                               batch.pop("streams"), pos.micro)
            elif split:
                w, state = batch.pop("reader")
                own = own[:w] + [state] + own[w + 1:]
                pos = Position(pos.epoch, 0, pos.examples + width, 0, 0, split,
                               [own if q == rank else None for q in range(world)],
                               plan.micro_batch)
            else:
                pos = Position(pos.epoch, 0, pos.examples + width, batch.pop("window_end", 0),
                               batch.pop("offset_end", 0), split)
            if left is not None and taken == left:
                log.info("data: epoch %d: this rank decoded %d rows for %d examples of its "
                         "own", pos.epoch, decoded, left * plan.micro_batch)
            yield pos, batch
        if taken == 0 and pos.window == 0 and pos.offset == 0:
            raise DataError(f"rank {rank} read no full batch of {plan.micro_batch} from {d.train}")
        pos, same = Position(epoch=pos.epoch + 1, readers=readers), False


def reads_line(name: str, shards: int, world: int, workers: int, rank: int, readers: int,
               window: int, known_length: bool, micro: int) -> str:
    """What rank `rank` reads of a window-shuffled stream, in one line for its log."""
    if readers:
        return (f"{name}: {shards} shards >= {world} ranks x {workers} workers: each worker "
                f"of rank {rank} reads only its own shards (1 in every {readers} of the "
                f"epoch's shard order, seeded by (run.seed, epoch)), each window of {window} "
                f"rows shuffled")
    why = (f"{shards} shards < {world} ranks x {workers} workers" if shards < world * workers
           else f"{shards} shards but the epoch's length is unknown (set data.train_examples)"
           if not known_length and world * workers > 1 else f"{shards} shard(s), 1 reader")
    keep = "" if world == 1 else f" and keeps its 1/{world}"
    return (f"{name}: {why}: every rank reads the whole stream{keep} (shard order and each "
            f"window of {window} rows shuffled by (run.seed, epoch))")


def _readers_refusal(pos: Position, readers: int, shards: int, world: int, workers: int) -> str:
    now = (f"{world} ranks x {workers} workers would split them {readers} ways" if readers
           else f"{world} ranks x {workers} workers would read the whole stream")
    return (f"the checkpoint stopped {pos.examples} examples into epoch {pos.epoch} with its "
            f"{shards} shards split between {pos.readers} readers (ranks x data.num_workers) "
            f"and {now}, and it was written before checkpoints recorded where each reader "
            f"stood: resume with the ranks and data.num_workers it was saved with")


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


class IndexedEval(IterableDataset):
    """Prepared eval data: the examples at row indices `examples` (file order) in batches;
    this rank encodes batch b when b % world == rank, reading only those rows. Then the same
    {'end': batches, 'skipped': empty rows} (and {'spare': batch 0}) as EvalShard."""

    def __init__(self, prepared: sources.Prepared, examples: np.ndarray, task: Task,
                 tokenizer: Any, batch_size: int, rank: int, world: int, skipped: int,
                 labeled: bool = True):
        self.prepared, self.examples, self.task, self.tokenizer = prepared, examples, task, tokenizer
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.skipped, self.labeled = skipped, labeled

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        count = -(-len(self.examples) // self.batch_size)
        for b in range(self.rank, count, self.world):
            if (b // self.world) % workers == worker:
                yield self._encode(b)
        if worker == 0:
            if self.rank >= count and count:
                yield {"spare": self._encode(0)}
            yield {"end": count, "skipped": self.skipped}

    def _encode(self, b: int) -> dict:
        mine = self.examples[b * self.batch_size:(b + 1) * self.batch_size].tolist()
        return self.task.encode(self.prepared.read(mine), self.tokenizer, indices=mine,
                                labeled=self.labeled)


def eval_examples(prepared: sources.Prepared, limit: Optional[int], seed: int) -> np.ndarray:
    """The row indices scored, in file order: every non-empty row, or a sample of `limit` of
    them drawn with run.seed (a sorted split's first rows would be one class). The draw
    depends on nothing else, so every rank and world size scores the same sample."""
    keep = np.asarray(prepared.keep)
    if limit is None or limit >= len(keep):
        return keep
    chosen = np.random.default_rng([seed, _EVAL_STREAM]).choice(len(keep), limit, replace=False)
    return keep[np.sort(chosen)]


_EVAL_STREAM = 0xE7A1  # the eval sample's own seed stream, apart from epoch orders


def eval_loader(plan: Plan, task: Task, tokenizer: Any, rank: int, world: int,
                data: Optional[str] = None) -> Optional[DataLoader]:
    if not plan.has_eval and data is None:
        return None
    d = plan.recipe.data
    limit = plan.recipe.eval.max_examples
    name = data if data is not None else d.eval if d.eval is not None else d.train
    if d.streaming and data is None:
        shard: IterableDataset = EvalShard(open_source(name, d.eval_split, plan), task,
                                           tokenizer, plan.eval_micro_batch, rank, world,
                                           limit=limit)
    else:
        prepared = prepare(name, d.eval_split, plan, task)
        examples = eval_examples(prepared, limit, plan.recipe.run.seed)
        shard = IndexedEval(prepared, examples, task, tokenizer, plan.eval_micro_batch, rank,
                            world, skipped=len(prepared.rows) - len(prepared.keep))
    return DataLoader(shard, batch_size=None, collate_fn=_as_made, num_workers=d.num_workers,
                      generator=_loader_generator(), worker_init_fn=_worker_init)
