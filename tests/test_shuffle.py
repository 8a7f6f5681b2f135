"""data.shuffle: each epoch in its own seeded order, read by index, the same at any world size.

A label-sorted training file (scripts/make_sorted_news.py) is what many hub splits look like;
read in file order the tiny recipe learns one class (accuracy 0.276). Shuffled, it must train
as well as the shipped file.
"""

from __future__ import annotations

import json
import os
from unittest import mock

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TINY, decoded_per_epoch, in_process
from together import finish_in_turn, in_turn, plan_run
from launcher import plan as plan_mod
from launcher import tasks
from launcher.engine import data, faults
from launcher.engine.model import build_tokenizer
from launcher.recipe.load import load
from launcher.run_dir import RunDir

TRAIN = REPO / "data/tiny_news/train.jsonl"
SORTED = REPO / "data/tiny_news/train_sorted.jsonl"


STREAM = ["data.streaming=true", "data.shuffle_window=150",
          "run.epochs=None", "run.max_steps=12", "checkpoint.every=0", "eval.every=0",
          "eval.max_examples=64", "run.log_every=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, RunDir]:
    """Every run of the module that does not wait for another, planned by `launcher run
    --dry-run` here and trained in turn in one process (together.in_turn): the tiny recipe
    (2 epochs) on the shipped file and on the label-sorted one (evaluated and saved at their
    end only: what is tested is the final accuracy and what was decoded), and the
    window-shuffled stream run twice, once to the end and once stopped by SIGTERM after step
    5 (LAUNCHER_FAULT, which the plan takes from the shell that plans it)."""
    done = {name: RunDir(tmp_path_factory.mktemp(name) / "run")
            for name in ("shipped", "sorted", "stream_ref", "stream_cut")}
    args = {name: [TINY, f"run.output_dir={done[name].root}", f"data.train={train}",
                   "eval.every=0", "checkpoint.every=0"]
            for name, train in (("shipped", TRAIN), ("sorted", SORTED))}
    args.update({name: [TINY, *STREAM, f"run.output_dir={done[name].root}"]
                 for name in ("stream_ref", "stream_cut")})
    for name, launch in args.items():
        fault = {faults.ENV: "at=step,step=5,rank=0,do=TERM"} if name == "stream_cut" else {}
        with mock.patch.dict(os.environ, fault):
            plan_run(*launch)
    finish_in_turn(in_turn(*(rd.plan for rd in done.values())))
    return done


def test_label_sorted_file_trains_as_well_as_the_shipped_one(runs):
    # Read in file order the sorted one got 0.276 (one class).
    acc = {k: json.loads(runs[k].summary.read_text())["eval"]["accuracy"]
           for k in ("shipped", "sorted")}
    assert acc["shipped"] > 0.9, acc
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


def test_eval_max_examples_is_a_seeded_sample_the_same_at_any_world_size():
    """On a label-sorted split the first 100 rows are all one class; the sample is not, and
    the ranks of 1, 2 or 3 score the same 100 examples between them, each exactly once."""
    plan = plan_mod.build(load(TINY, [f"data.eval={SORTED}", "eval.max_examples=100",
                                      "eval.micro_batch=8"]))
    task = tasks.for_recipe(plan.recipe)
    tokenizer = build_tokenizer(plan.recipe.model)
    scored = {}
    for world in (1, 2, 3):
        indices, labels = [], []
        for rank in range(world):
            for item in data.eval_loader(plan, task, tokenizer, rank, world):
                if "inputs" in item:
                    indices += item["index"]
                    labels += item["inputs"]["labels"].tolist()
                elif "end" in item:
                    assert item["end"] == 13  # 100 examples in batches of 8
        assert len(indices) == len(set(indices)) == 100
        assert set(labels) == {0, 1, 2, 3}
        scored[world] = sorted(indices)
    assert scored[1] == scored[2] == scored[3]
    assert scored[1] != list(range(100))
    other = plan_mod.build(load(TINY, [f"data.eval={SORTED}", "eval.max_examples=100",
                                       "run.seed=7"]))
    prepared = data.prepare(str(SORTED), "test", other, task)
    assert data.eval_examples(prepared, 100, 7).tolist() != scored[1]  # another seed, another sample


def test_a_window_shuffled_stream_resumes_at_its_position_on_any_world_size(tiny):
    """data.streaming with data.shuffle: windows of 300 rows, each permuted; a stream started
    from the position after 5 micro batches of 3 x 4 goes on with the very next examples, at
    1 rank as at 3."""
    plan = plan_mod.build(load(TINY, ["scale.micro_batch=4", "scale.global_batch=12",
                                      "run.epochs=None", "run.max_steps=5", "data.eval=None",
                                      "data.streaming=true", "data.shuffle_window=300"]))
    _, task, tokenizer = tiny

    def take(rank, world, start, count):
        stream = data.train_batches(plan, task, tokenizer, rank=rank, world=world, start=start)
        got = [next(stream) for _ in range(count)]
        return got[-1][0], [i for _, b in got for i in b["index"]]

    pos, first = take(0, 1, data.Position(), 60)  # 240 examples: into window 0 only
    assert pos == data.Position(epoch=0, row=0, examples=240, window=0, offset=240)
    assert sorted(first) != first and max(first) < 300  # permuted within the window
    end, whole = take(0, 1, data.Position(), 90)  # 360 examples: into window 1
    assert end.window == 1 and whole[:240] == first
    later = [take(r, 3, pos, 10)[1] for r in range(3)]
    assert sorted(sum(later, [])) == sorted(whole[240:])
    assert [later[k % 3][k // 3] for k in range(12)] == whole[240:252]
    # epoch 1's windows are in another order
    _, again = take(0, 1, data.Position(epoch=1), 60)
    assert max(again) < 300 and again != first


def test_window_shuffled_stream_preempted_and_resumed_ends_with_the_same_weights(runs):
    """32 examples a step in windows of 150: stopped after step 5 (example 160, in window 1),
    resumed, and the weights are bit-identical to a run that never stopped. (How ranks split
    a window's examples is checked at 1 and 3 ranks above.)"""
    ref, cut = runs["stream_ref"], runs["stream_cut"]
    state = json.loads((cut.latest() / "trainer_state.json").read_text())
    assert state["position"] == {"epoch": 0, "row": 0, "examples": 160, "window": 1,
                                 "offset": 10}
    assert json.loads((cut.root / "cell.json").read_text())["result"]["preempted"]
    # `launcher resume` as far as its launch, then the engine from the checkpoint, as above
    rc, out, err = in_process("resume", cut.root, "--dry-run")
    assert rc == 0 and "from step 5" in out, err
    finish_in_turn(in_turn(cut.plan))
    assert cut.metrics.read_text().count("\n") == 12
    losses = [[json.loads(line)["loss"] for line in rd.metrics.read_text().splitlines()]
              for rd in (ref, cut)]
    assert losses[0] == losses[1]
    a, b = (load_file(str(rd.final / "model.safetensors")) for rd in (ref, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_streams_shards_come_in_a_seeded_order_each_epoch(tmp_path):
    import datasets

    files = []
    for s in range(4):
        path = tmp_path / f"part{s}.jsonl"
        path.write_text("".join(json.dumps({"text": f"s{s} r{r}", "label": 0}) + "\n"
                                for r in range(3)))
        files.append(str(path))
    rows = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    assert rows.n_shards == 4
    orders = [[r["text"].split()[0] for r in data.sources.iter_rows(data.epoch_stream(rows, 42, e))][::3]
              for e in range(3)]
    assert all(sorted(o) == ["s0", "s1", "s2", "s3"] for o in orders)
    assert len({tuple(o) for o in orders}) > 1
    assert orders[0] == [r["text"].split()[0] for r in
                         data.sources.iter_rows(data.epoch_stream(rows, 42, 0))][::3]


def _old_run_dir(root) -> RunDir:
    """A run directory as a launcher from before data.shuffle left it: its plan.json has no
    data.shuffle (it read every epoch in file order, streamed) and its checkpoint at step 5
    no data_order; position (epoch, row, examples)."""
    from launcher.checkpoint import compat, store

    rd = RunDir(root)
    plan = plan_mod.build(load(TINY, ["data.streaming=true", "data.shuffle=false"]),
                          run_dir=str(rd.root))
    old = json.loads(plan.to_json())
    for key in ("shuffle", "shuffle_window"):
        del old["recipe"]["data"][key]
    rd.plan.mkdir(parents=True)
    (rd.plan / "plan.json").write_text(json.dumps(old))
    step = rd.checkpoint(5)
    step.mkdir(parents=True)
    state = {"step": 5, "epoch": 0, "position": {"epoch": 0, "row": 163, "examples": 160},
             "world_size": 1, "global_batch": plan.global_batch, "reason": "signal",
             "fingerprint": compat.fingerprint(plan.recipe,
                                                    tasks.for_recipe(plan.recipe).labels),
             "scheduler": {}, "scaler": None, "evals_since_best": 0, "saved_at": 0.0,
             "log_window": None}
    (step / store.STATE).write_text(json.dumps(state))
    store.write_manifest(step, 5, store.describe([step / store.STATE], step))
    (rd.checkpoints / "LATEST").write_text(step.name)
    return rd


def test_an_old_checkpoint_without_a_data_order_goes_on_in_file_order_and_says_so(
        tmp_path, capsys):
    """Its position counts file order. `resume` goes on in file order and says so in one
    line; `run` under the shuffled default is refused with the fix (shuffled, the rest of the
    epoch would repeat some examples and skip others); with data.shuffle=false it goes on."""
    from launcher import cli

    rd = _old_run_dir(tmp_path / "old")
    assert cli.main(["resume", str(rd.root), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "resuming" in out.out and "from step 5" in out.out
    notes = [line for line in out.err.splitlines() if line.startswith("note:")]
    assert notes == ["note: step-0000005 holds no data order (an older launcher's): it goes on "
                     "in file order (data.shuffle=false), as it was read"]
    assert json.loads((rd.plan / "plan.json").read_text())["recipe"]["data"]["shuffle"] is False

    args = ["run", str(TINY), "data.streaming=true", f"run.output_dir={rd.root}", "--dry-run"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.shuffle" in err[0] and "set data.shuffle=false to go on in " \
        "file order (exact), or start in a new run.output_dir" in err[0], err
    assert cli.main([*args, "data.shuffle=false"]) == 0
    assert "from step 5" in capsys.readouterr().out
    # stopped at an epoch's end, nothing of its order is left: the next epoch is shuffled
    state = json.loads((rd.checkpoint(5) / "trainer_state.json").read_text())
    state["position"] = {"epoch": 1, "row": 0, "examples": 0}
    _rewrite_state(rd.checkpoint(5), state)
    assert cli.main(args) == 0
    assert "from step 5" in capsys.readouterr().out


def _rewrite_state(step, state) -> None:
    from launcher.checkpoint import store

    (step / store.STATE).write_text(json.dumps(state))
    store.write_manifest(step, 5, store.describe([step / store.STATE], step))
