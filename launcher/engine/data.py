"""Streams of tokenized batches, split across ranks so that no two ranks see the same example.

Rows are read as an HF `IterableDataset`, split per rank with `split_dataset_by_node`
(whole shards per rank when the file count allows, else every world-size-th row), and
tokenized per micro batch with dynamic padding, in the DataLoader's workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from launcher import sources
from launcher.plan.build import Plan
from launcher.recipe.schema import DataConfig


class DataError(ValueError):
    """A row the recipe's columns and labels cannot make sense of."""


@dataclass
class Collate:
    """Raw rows -> model inputs; a picklable object so DataLoader workers can run it."""

    tokenizer: Any
    data: DataConfig
    labels: tuple[str, ...]

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        d = self.data
        texts = [str(r[d.text_column]) for r in rows]
        pairs = [str(r[d.text_pair_column]) for r in rows] if d.text_pair_column else None
        batch = dict(self.tokenizer(texts, pairs, truncation=True, max_length=d.max_length,
                                    padding=True, pad_to_multiple_of=d.pad_to_multiple_of,
                                    return_tensors="pt"))
        batch["labels"] = torch.tensor([self._label_id(r[d.label_column]) for r in rows])
        ids = [str(r[d.id_column]) for r in rows] if d.id_column else [t[:80] for t in texts]
        return {"inputs": batch, "ids": ids}

    def _label_id(self, value: Any) -> int:
        if isinstance(value, str):
            if value in self.labels:
                return self.labels.index(value)
            raise DataError(f"label '{value}' in column '{self.data.label_column}' is not in "
                            f"task.labels {list(self.labels)}")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(self.labels):
            raise DataError(f"label {value!r} in column '{self.data.label_column}' is not an id "
                            f"below {len(self.labels)} (task.labels has {len(self.labels)} names)")
        return value


def _stream(name: str, split: str, plan: Plan, rank: int, world: int, limit: Optional[int]):
    d = plan.recipe.data
    src = sources.resolve(name, config=d.dataset_config, split=split)
    ds = sources.open_stream(src, streaming=d.streaming)
    if limit is not None:
        ds = ds.take(limit)
    return split_dataset_by_node(ds, rank=rank, world_size=world)


def _loader(ds, batch_size: int, collate: Collate, num_workers: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                      persistent_workers=False)


def train_batches(plan: Plan, tokenizer: Any, rank: int, world: int) -> Iterator[tuple[int, dict]]:
    """(epoch, micro batch) forever; an epoch of known length ends after exactly
    steps_per_epoch x grad_accum micro batches on every rank, so ranks never wait on each other."""
    d = plan.recipe.data
    collate = Collate(tokenizer, d, plan.recipe.task.labels)
    ds = _stream(d.train, d.train_split, plan, rank, world, None)
    per_epoch = None if plan.steps_per_epoch is None else plan.steps_per_epoch * plan.grad_accum
    epoch = 0
    while True:
        ds.set_epoch(epoch)
        taken = 0
        for batch in _loader(ds, plan.micro_batch, collate, d.num_workers):
            if len(batch["ids"]) < plan.micro_batch:
                break  # a short tail batch would change the loss scale; drop it
            yield epoch, batch
            taken += 1
            if per_epoch is not None and taken == per_epoch:
                break
        if taken == 0:
            raise DataError(f"rank {rank} read no full batch of {plan.micro_batch} from "
                            f"{d.train}")
        epoch += 1


def eval_batches(plan: Plan, tokenizer: Any, rank: int, world: int) -> Optional[Iterator[dict]]:
    """Every eval example on exactly one rank, the last partial batch included."""
    if not plan.has_eval:
        return None
    d = plan.recipe.data
    name = d.eval if d.eval is not None else d.train
    ds = _stream(name, d.eval_split, plan, rank, world, plan.recipe.eval.max_examples)
    collate = Collate(tokenizer, d, plan.recipe.task.labels)
    return iter(_loader(ds, plan.eval_micro_batch, collate, d.num_workers))
