"""A window-shuffled stream of several shards (files given as a pattern; hub data files alike):
with at least world x workers shards each rank and DataLoader worker reads only its own shards,
and resumes exactly; with fewer, every rank reads the whole stream and its log says so.

The shards look like a real split written in parts: label-sorted, imbalanced (one class is
mostly missing), of uneven sizes, with a few empty texts.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
from pathlib import Path

import pytest

from conftest import REPO, TINY, decoded_per_epoch
import together
from launcher import plan as plan_mod
from launcher import tasks
from launcher.engine import data
from launcher.engine.model import build_tokenizer
from launcher.recipe.load import load
from launcher.run_dir import RunDir

SORTED = REPO / "data/tiny_news/train_sorted.jsonl"
SIZES = (260, 180, 300, 220, 240, 200)  # rows per shard: uneven, as parts of a real split


def write_shards(where: Path, sizes=SIZES) -> str:
    """Consecutive parts of the label-sorted file, label 3 mostly dropped, every 97th text
    empty; the pattern that names them."""
    rows = [json.loads(line) for line in SORTED.read_text().splitlines()]
    rows = [r for i, r in enumerate(rows) if r["label"] != 3 or i % 10 == 0]
    where.mkdir(parents=True, exist_ok=True)
    start = 0
    for s, n in enumerate(sizes):
        part = rows[start:start + n]
        for i, r in enumerate(part):
            if (start + i) % 97 == 0:
                r["text"] = ""
        (where / f"part-{s:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        start += n
    return str(where / "part-*.jsonl")


def _plan(pattern: str, *extra: str):
    return plan_mod.build(load(TINY, [f"data.train={pattern}", "data.streaming=true",
                                      "data.shuffle_window=64", "data.eval=None",
                                      "scale.micro_batch=4", "scale.global_batch=16",
                                      "run.epochs=1", *extra]))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    pattern = write_shards(tmp_path_factory.mktemp("shards"))
    plan = _plan(pattern)
    task = tasks.for_recipe(plan.recipe)
    return pattern, plan, task, build_tokenizer(plan.recipe.model)


def _take(shards, plan, rank, world, start, count, positions=None):
    _, _, task, tokenizer = shards
    stream = data.train_batches(plan, task, tokenizer, rank=rank, world=world, start=start)
    got = [next(stream) for _ in range(count)]
    if positions is not None:
        positions.extend(p for p, _ in got)
    return got[-1][0], [b["index"] for _, b in got]


def _joined(positions):
    """What a checkpoint saves: the ranks' positions after the same micro batch, joined
    (the trainer gathers each rank's readers' states)."""
    first = positions[0]
    if not data.needs_join(first):
        return first
    return data.joined_position(first, [p.streams for p in positions])


def test_each_rank_and_worker_reads_only_its_own_shards_and_resumes_exactly(shards, caplog):
    """6 shards, 2 ranks x 2 workers: 4 readers, each its own shards of the epoch's order.
    A stream started from the position after 5 micro batches (odd: the other worker goes on
    first) gives each rank the very micro batches an uninterrupted one gives it."""
    pattern, _, task, tokenizer = shards
    plan = _plan(pattern, "data.num_workers=2")
    rows = data.open_source(plan.recipe.data.train, "train", plan)
    assert rows.n_shards == 6
    caplog.set_level(logging.INFO, logger="launcher.engine")
    whole, at = {}, {0: [], 1: []}
    for rank in (0, 1):
        pos, whole[rank] = _take(shards, plan, rank, 2, data.Position(), 12, at[rank])
        assert (pos.epoch, pos.examples, pos.readers, pos.micro) == (0, 12 * 8, 4, 4)
        for j, batch in enumerate(whole[rank]):
            reader = rank * 2 + j % 2
            own = data.reader_shards(6, 42, 0, 4, reader)
            assert {i >> 32 for i in batch} <= set(own), (rank, j, own)
    lines = [r.getMessage() for r in caplog.records if "shards >=" in r.getMessage()]
    assert lines and "6 shards >= 2 ranks x 2 workers: each worker of rank 0 reads only " \
        "its own shards" in lines[0]
    seen = [i for rank in (0, 1) for b in whole[rank] for i in b]
    assert len(seen) == len(set(seen))  # no example twice within the epoch
    # shuffled: not file order within a shard
    assert any(b != sorted(b) for b in whole[0])
    # The checkpoint's position: where each of the 4 readers stood (its window's start)
    saved = _joined([at[0][4], at[1][4]])
    assert saved.examples == 5 * 8 and all(s is not None for row in saved.streams for s in row)
    assert data.Position(**json.loads(json.dumps(saved.to_dict()))) == saved
    older = data.Position(examples=5 * 8, readers=4)  # an older checkpoint: no reader states
    for rank in (0, 1):
        for start in (saved, older):  # the older one reads each reader's rows up to it again
            later = _take(shards, plan, rank, 2, start, 7)[1]
            assert later == whole[rank][5:]
    # an older checkpoint on another split would be another order: one line says so
    with pytest.raises(data.DataError, match="resume with the ranks and data.num_workers it "
                                             "was saved with"):
        _take(shards, plan, 0, 3, data.Position(examples=48, readers=4), 1)


def test_a_rank_decodes_about_its_share_of_the_rows(shards, caplog):
    """The rows counter each rank logs at an epoch's end: with 2 readers over 6 shards, one
    rank reads about rows / 2 rows in an epoch (its shards), where 1 rank reads them all."""
    import re

    pattern, plan, task, tokenizer = shards
    rows = sum(SIZES)
    caplog.set_level(logging.INFO, logger="launcher.engine")
    read = {}
    for rank, world in ((0, 2), (1, 2), (0, 1)):
        caplog.clear()
        stream = data.train_batches(plan, task, tokenizer, rank=rank, world=world)
        for _ in range(plan.steps_per_epoch * plan.global_batch // world // plan.micro_batch):
            next(stream)
        found = [re.search(r"epoch 0: this rank decoded (\d+) rows", r.getMessage())
                 for r in caplog.records]
        read[rank, world] = [int(m[1]) for m in found if m][0]
    assert all(rows * 0.35 < read[r, 2] < rows * 0.65 for r in (0, 1)), read
    assert read[0, 1] > rows * 0.95, read


def test_fewer_shards_than_readers_reads_the_whole_stream_and_says_so(tmp_path, caplog):
    pattern = write_shards(tmp_path / "three", sizes=(300, 250, 200))
    plan = _plan(pattern, "data.num_workers=2")
    task = tasks.for_recipe(plan.recipe)
    caplog.set_level(logging.INFO, logger="launcher.engine")
    pos, _ = _take((None, None, task, build_tokenizer(plan.recipe.model)), plan, 1, 2,
                   data.Position(), 2)
    assert pos.readers == 0 and pos.offset > 0
    assert any("data: " + pattern + ": 3 shards < 2 ranks x 2 workers: every rank reads the "
               "whole stream and keeps its 1/2" in r.getMessage() for r in caplog.records)


def _launched(root: Path) -> dict:
    """The 2-rank launch of test_two_ranks_read_their_own_shards, started, not waited for."""
    sizes = tuple(n // 4 for n in SIZES)
    pattern = write_shards(root / "parts", sizes)
    out = RunDir(root / "run")
    args = [f"data.train={pattern}", "data.streaming=true", "data.shuffle_window=32",
            "data.eval=None", "scale.micro_batch=4", "scale.global_batch=24", "run.epochs=1"]
    proc = together.start(["run", TINY, *args, "--nproc-per-node", "2",
                           f"run.output_dir={out.root}", "checkpoint.every=5",
                           "checkpoint.keep_last=3", "run.trace_examples=true"],
                          background=True)
    return {"sizes": sizes, "args": args, "out": out, "proc": proc}


# With the session (conftest.py): this module comes late, when little else is left to run.
EARLY = together.Early("launched", _launched, reads=("launched",))


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> dict:
    started = EARLY.start(tmp_path_factory)
    proc = together.finish(started["proc"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return started


def test_two_ranks_read_their_own_shards(launched):
    """One 2-rank launch on 6 shards: each rank logs that it reads only its shards and
    decodes about half of the rows an epoch. Its step-5 checkpoint records where both
    ranks' readers stood (gathered at save), and the rest of the epoch read from it on 3
    ranks trains, step by step, the examples the launch trained (its example ledger)."""
    sizes, args, out = launched["sizes"], launched["args"], launched["out"]
    logs = {p.stem: p.read_text() for p in out.logs.glob("rank*.log")}
    for rank in (0, 1):
        assert f"each worker of rank {rank} reads only its own shards" in logs[f"rank{rank}"]
    counts = decoded_per_epoch(out)
    rows = sum(sizes)
    assert [c[:2] for c in counts] == [(0, 0), (1, 0)]
    assert all(rows * 0.3 < c[2] < rows * 0.7 for c in counts), counts

    saved = json.loads((out.checkpoint(5) / "trainer_state.json").read_text())["position"]
    assert saved["examples"] == 5 * 24 and len(saved["streams"]) == 2, saved
    ledger = collections.defaultdict(collections.Counter)
    for trace in out.trace.glob("rank*.txt"):
        for line in trace.read_text().splitlines():
            step, example = line.split("\t")
            ledger[int(step)][example] += 1
    plan = plan_mod.build(load(TINY, [*args, "scale.procs_per_node=3"]))
    task = tasks.for_recipe(plan.recipe)
    left = (plan.steps_per_epoch - 5) * 2
    later = {r: [b["ids"] for _, b in itertools.islice(data.train_batches(
        plan, task, build_tokenizer(plan.recipe.model), rank=r, world=3,
        start=data.Position(**saved)), left)] for r in range(3)}
    assert _steps(later, 2) == [ledger[s] for s in range(6, plan.steps_per_epoch + 1)]


def test_an_unsharded_epoch_goes_on_unsharded_after_a_resume_on_more_ranks(shards):
    """A 1-rank checkpoint read the whole stream; resumed on 2 ranks with 6 shards, the rest
    of that epoch is still the whole stream's (exact: the 2 ranks train what 1 would have),
    and the next epoch splits the shards."""
    _, plan, _, _ = shards
    pos, one = _take(shards, plan, 0, 1, data.Position(), 8)
    assert pos.readers == 0
    start = _take(shards, plan, 0, 1, data.Position(), 4)[0]
    two = [_take(shards, plan, r, 2, start, 2)[1] for r in (0, 1)]
    assert sorted(sum(two[0] + two[1], [])) == sorted(sum(one[4:], []))
    per_rank = plan.steps_per_epoch * plan.global_batch // 8
    end, _ = _take(shards, plan, 0, 2, start, per_rank - 2 + 1)
    assert end.epoch == 1 and end.readers == 2


def test_a_pattern_of_files_is_checked_before_launch(tmp_path):
    from launcher.errors import RecipeError

    with pytest.raises(RecipeError, match="no file matches"):
        _plan(str(tmp_path / "none-*.jsonl"))
    pattern = write_shards(tmp_path / "mixed", sizes=(40, 40))
    (tmp_path / "mixed" / "part-09.jsonl").write_text('{"body": "x", "label": 1}\n')
    with pytest.raises(RecipeError, match="part-09.jsonl has columns body, label but"):
        _plan(pattern)


def test_an_older_split_epoch_on_another_split_is_refused_before_launch(shards, tmp_path,
                                                                        capsys):
    """A checkpoint of 2 ranks x 2 workers, mid-epoch, each reading its own shards, written
    before checkpoints recorded where each reader stood: on 3 ranks one line says how to
    resume it. One that records them goes on on 3 ranks."""
    from launcher import cli
    from launcher.checkpoint import compat, store

    pattern, _, task, _ = shards
    args = [f"data.train={pattern}", "data.streaming=true", "data.shuffle_window=64",
            "data.eval=None", "scale.micro_batch=4", "scale.global_batch=24",
            "data.num_workers=2", "run.epochs=1"]
    plan = plan_mod.build(load(TINY, [*args, "scale.procs_per_node=2"]))
    rd = RunDir(tmp_path / "run")
    step = rd.checkpoint(3)
    step.mkdir(parents=True)
    state = {"step": 3, "epoch": 0, "world_size": 2, "global_batch": 24,
             "position": data.Position(examples=72, readers=4).to_dict(),
             "data_order": compat.data_order(plan.recipe),
             "fingerprint": compat.fingerprint(plan.recipe, task.labels)}
    (step / store.STATE).write_text(json.dumps(state))
    store.write_manifest(step, 3, store.describe([step / store.STATE], step))
    (rd.checkpoints / "LATEST").write_text(step.name)
    run = ["run", str(TINY), *args, f"run.output_dir={rd.root}", "--dry-run"]
    assert cli.main([*run, "--nproc-per-node", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 ranks x 2 workers each read their own" in err[0] and \
        "resume on 2 ranks with data.num_workers=2" in err[0], err
    assert cli.main([*run, "--nproc-per-node", "2"]) == 0
    assert "from step 3" in capsys.readouterr().out
    streams = [[[0, 0, 0, 1, 5], [0, 1, 10, 0, 18]], [[0, 0, 0, 1, 3], [1, 0, 0, 0, 20]]]
    state["position"] = data.Position(examples=72, readers=4, streams=streams, micro=4).to_dict()
    (step / store.STATE).write_text(json.dumps(state))
    store.write_manifest(step, 3, store.describe([step / store.STATE], step))
    assert cli.main([*run, "--nproc-per-node", "3"]) == 0, capsys.readouterr().err
    assert "from step 3" in capsys.readouterr().out


@pytest.fixture(scope="module")
def two_ranks(shards):
    """An uninterrupted epoch of 2 ranks x 1 worker (2 readers, 3 shards each), 24 a step:
    each rank's positions and micro batches."""
    pattern, _, task, tokenizer = shards
    plan = _plan(pattern, "scale.global_batch=24")
    per_rank = plan.steps_per_epoch * plan.global_batch // 8
    at, got = {0: [], 1: []}, {}
    for rank in (0, 1):
        _, got[rank] = _take(shards, plan, rank, 2, data.Position(), per_rank, at[rank])
    return plan, at, got


def _made_python(monkeypatch):
    """A counter of the rows HF turns into Python objects (as a batch on the arrow path, or
    one at a time as a skip done in Python would)."""
    from datasets.formatting.formatting import PythonArrowExtractor

    made = [0]
    for name in ("extract_row", "extract_batch"):
        real = getattr(PythonArrowExtractor, name)
        monkeypatch.setattr(PythonArrowExtractor, name,
                            lambda self, table, _real=real: (made.__setitem__(
                                0, made[0] + table.num_rows), _real(self, table))[1])
    return made


def test_a_resume_reads_only_each_readers_current_window(shards, two_ranks, monkeypatch):
    """80 micro batches (320 examples) into each reader's shards, a resume at the same split
    turns about one window (64 rows) of each reader into Python, not the 320+ before it:
    each reader opens its shard at its window's start (HF's arrow path), re-reads that window
    untokenized and goes on from the same offset. An older checkpoint (no reader states)
    still resumes exactly, by reading the rows up to it again."""
    plan, at, got = two_ranks
    saved = _joined([at[0][79], at[1][79]])
    made = _made_python(monkeypatch)
    read = {}
    for rank in (0, 1):
        for name, start in (("saved", saved), ("older", data.Position(examples=640, readers=2))):
            made[0] = 0
            assert _take(shards, plan, rank, 2, start, 1)[1] == [got[rank][80]]
            read[name, rank] = made[0]
    print("rows made Python for the first batch after the resume:", read)
    assert all(read["saved", r] <= 2 * 64 for r in (0, 1)), read
    assert all(read["older", r] >= 320 for r in (0, 1)), read
    # Resumed from an older one, a reader not yet read again has no state: none is saved
    partial = data.Position(examples=648, readers=2, streams=[[[0, 1, 9, 4, 20]], [None]],
                            micro=4)
    assert data.needs_join(partial)
    assert data.joined_position(partial, [partial.streams, partial.streams]).streams is None


def _steps(batches_by_rank, per_step):
    """Each optimizer step's examples (a multiset), from each rank's micro batches in order."""
    count = len(next(iter(batches_by_rank.values())))
    return [collections.Counter(i for b in batches_by_rank.values()
                                for m in b[s:s + per_step] for i in m)
            for s in range(0, count, per_step)]


def test_a_split_epoch_resumed_on_3_ranks_or_1_trains_every_example_once(shards, two_ranks):
    """2 readers preempted 3 steps into the epoch (9 micro batches each), resumed on 3 ranks
    and on 1: the rest of the epoch is the 2 old readers' streams, each from its window's
    start, in the order the 2 ranks would have trained them, every rank keeping its share.
    So each step after the resume trains the very examples the uninterrupted 2-rank run
    trains in that step, and the epoch (before + after) its examples exactly once each.
    Exactly once of the epoch, not of the split: shards differ in size, so a reader whose
    shards hold fewer than its quota reads them again (another pass) -- the same examples
    at any world size. A checkpoint in the middle of the 3-rank stretch resumes back on 2
    ranks, exact too; from the next epoch each split reads its own shards."""
    plan, at, got = two_ranks
    steps = _steps(got, 3)  # 24 a step: 3 micro batches of 4 on each of 2 ranks
    assert sum(sum(s.values()) for s in steps) == plan.steps_per_epoch * 24
    # An example comes twice in the epoch only from a reader that made a second pass.
    passes = {r: at[r][-1].streams[r][0][0] for r in (0, 1)}
    twice = [i for i, n in sum(steps, collections.Counter()).items() if n > 1]
    own = {r: data.reader_shards(6, 42, 0, 2, r) for r in (0, 1)}
    assert all(passes[r] > 0 for i in twice for r in (0, 1) if i >> 32 in own[r])
    saved = _joined([at[0][8], at[1][8]])
    assert saved.examples == 72
    for world in (3, 1):
        per_step = 24 // (4 * world)
        left = (plan.steps_per_epoch - 3) * per_step
        after, positions = {}, {r: [] for r in range(world)}
        for rank in range(world):
            end, after[rank] = _take(shards, plan, rank, world, saved, left + 1,
                                     positions[rank])
            assert end.epoch == 1 and end.readers == (3 if world == 3 else 0)
            after[rank] = after[rank][:left]
        assert _steps(after, per_step) == steps[3:], world
        if world == 3:  # a checkpoint 2 steps later, resumed on the 2 ranks it began on
            again = _joined([positions[r][2 * per_step - 1] for r in range(3)])
            back = {r: _take(shards, plan, r, 2, again, (plan.steps_per_epoch - 5) * 3)[1]
                    for r in (0, 1)}
            assert back == {r: got[r][15:] for r in (0, 1)}
