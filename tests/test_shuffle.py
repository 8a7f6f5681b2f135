"""data.shuffle: each epoch in its own seeded order, read by index, the same at any world size.

A label-sorted training file (scripts/make_sorted_news.py) is what many hub splits look like;
read in file order the tiny recipe learns one class (accuracy 0.276). Shuffled, it must train
as well as the shipped file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REPO, TINY, decoded_per_epoch, launcher
from launcher import plan as plan_mod
from launcher import tasks
from launcher.engine import data
from launcher.engine.model import build_tokenizer
from launcher.recipe.load import load
from launcher.run_dir import RunDir

TRAIN = REPO / "data/tiny_news/train.jsonl"
SORTED = REPO / "data/tiny_news/train_sorted.jsonl"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, RunDir]:
    """The tiny recipe, 1 process, on the shipped file and on the label-sorted one."""
    done = {}
    for name, train in (("shipped", TRAIN), ("sorted", SORTED)):
        out = tmp_path_factory.mktemp(name) / "run"
        proc = launcher("run", TINY, f"run.output_dir={out}", f"data.train={train}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        done[name] = RunDir(out)
    return done


def test_label_sorted_file_trains_as_well_as_the_shipped_one(runs):
    acc = {k: json.loads(rd.summary.read_text())["eval"]["accuracy"] for k, rd in runs.items()}
    print(acc)
    assert acc["shipped"] > 0.9
    assert abs(acc["sorted"] - acc["shipped"]) <= 0.02, acc


def test_one_rank_decodes_each_row_once_an_epoch(runs):
    # 4,000 rows, global batch 32: 125 steps an epoch, 2 epochs; nothing is read twice.
    assert decoded_per_epoch(runs["sorted"]) == [(0, 0, 4000, 4000), (0, 1, 4000, 4000)]


@pytest.fixture(scope="module")
def tiny():
    plan = plan_mod.build(load(TINY, ["scale.micro_batch=4", "scale.global_batch=12",
                                      "run.epochs=None", "run.max_steps=5"]))
    task = tasks.for_recipe(plan.recipe)
    return plan, task, build_tokenizer(plan.recipe.model)


def _ids(tiny, world: int, rank: int, start: data.Position, micro_batches: int):
    plan, task, tokenizer = tiny
    read = []
    prepared_read = data.sources.Prepared.read

    def counting(self, indices):
        read.extend(int(i) for i in indices)
        return prepared_read(self, indices)

    data.sources.Prepared.read = counting
    try:
        stream = data.train_batches(plan, task, tokenizer, rank=rank, world=world, start=start)
        out = [next(stream) for _ in range(micro_batches)]
    finally:
        data.sources.Prepared.read = prepared_read
    ids = [i for _, batch in out for i in batch["index"]]
    assert sorted(read) == sorted(ids)  # each rank decodes its own rows and no others
    return out[-1][0], ids


def test_a_step_trains_the_same_examples_at_any_world_size_and_epochs_differ(tiny):
    """Global micro batches of world x 4 are dealt to ranks; a step of 12 examples is the
    same 12 whether 1 rank takes them in 3 micro batches, 3 ranks in one each, or resumed
    mid-epoch from a position."""
    plan = tiny[0]
    _, one = _ids(tiny, 1, 0, data.Position(), 6)
    three = [_ids(tiny, 3, r, data.Position(), 2)[1] for r in range(3)]
    assert sorted(one[:12]) == sorted(three[0][:4] + three[1][:4] + three[2][:4])
    assert sorted(one) == sorted(sum(three, []))
    pos, later = _ids(tiny, 1, 0, data.Position(epoch=0, examples=12), 3)
    assert later == one[12:24] and pos == data.Position(epoch=0, row=0, examples=24)
    # shuffled: not file order, and another order the next epoch
    n = plan.train_examples
    first, second = (data.epoch_order(n, 42, e, True) for e in (0, 1))
    assert sorted(first) == list(range(n)) and not (first == second).all()
    assert one[:12] != list(range(12))
    assert (data.epoch_order(n, 42, 0, False) == np.arange(n)).all()
