"""Token budgets (scale.tokens_per_step, scale.micro_tokens): steps of real tokens, micro
batches of at most micro_tokens, the same forwards on every rank, exact resume.

In process: the engine's own stream (data.train_batches) at 1 to 4 ranks, padded and
packed, against the budgets and against each other; the plan's one-line refusals. One
torchrun launch pair: 2 ranks preempted mid-epoch, resumed on 3, against an uninterrupted
2-rank run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY
from together import Chain, Early
from launcher import cli, tasks
from launcher import plan as plan_mod
from launcher.engine import budget, data
from launcher.engine.model import build_tokenizer
from launcher.recipe.load import load
from launcher.run_dir import RunDir

BUDGET = ["scale.tokens_per_step=1024", "scale.micro_tokens=192", "run.epochs=None",
          "run.max_steps=5", "data.eval=None"]


def _setup(*overrides: str):
    plan = plan_mod.build(load(TINY, [*BUDGET, *overrides]))
    task = tasks.for_recipe(plan.recipe)
    tokenizer = build_tokenizer(plan.recipe.model)
    prepared = data.prepare(plan.recipe.data.train, "train", plan, task)
    return plan, task, tokenizer, prepared, budget.lengths(prepared, task, tokenizer)


def _steps(plan, task, tokenizer, world: int, steps: int, start=None):
    """Per step: per rank, its micro batches (the trainer's view: up to `last`)."""
    out = [[[] for _ in range(world)] for _ in range(steps)]
    for rank in range(world):
        stream = data.train_batches(plan, task, tokenizer, rank=rank, world=world, start=start)
        for s in range(steps):
            while True:
                pos, batch = next(stream)
                out[s][rank].append((pos, batch))
                if batch["last"]:
                    break
    return out


@pytest.mark.parametrize("packed", [False, True])
def test_steps_fill_the_budget_micro_batches_fit_and_every_rank_runs_the_same_forwards(packed):
    plan, task, tokenizer, prepared, lengths = _setup(f"data.packing={packed}")
    n = len(prepared.keep)
    order = np.asarray(prepared.keep)[data.epoch_order(n, 42, 0, True)]
    length_of = dict(zip(np.asarray(prepared.keep).tolist(), lengths.tolist()))
    at = {int(row): k for k, row in enumerate(order)}
    steps = 4
    by_world, pads = {}, 0
    for world in (1, 2, 3, 4):
        got = _steps(plan, task, tokenizer, world, steps)
        members = []
        for s, ranks in enumerate(got):
            assert len({len(r) for r in ranks}) == 1, (world, s)  # same forwards per rank
            rows = []
            for micro in ranks:
                for _, batch in micro:
                    ids = batch["inputs"]["input_ids"]
                    assert ids.numel() <= plan.micro_tokens, (world, s, ids.shape)
                    if packed:
                        assert ids.shape[1] == plan.recipe.data.max_length
                    if not batch.get("pad"):
                        rows += batch["index"]
                    else:
                        pads += 1
            assert len(rows) == len(set(rows))
            # The step is the next stretch of the epoch's order...
            first, last = min(at[r] for r in rows), max(at[r] for r in rows)
            assert sorted(at[r] for r in rows) == list(range(first, last + 1))
            assert first == (members[-1][1] + 1 if members else 0)
            # ...within the budget, and not cut short: the next example would not fit.
            real = sum(length_of[r] for r in rows)
            assert real <= plan.tokens_per_step
            assert real + length_of[int(order[last + 1])] > plan.tokens_per_step
            positions = {pos.examples for micro in ranks for pos, _ in micro}
            assert positions == {last + 1}
            members.append((first, last))
        by_world[world] = members
    # The same steps at every world size: a resume on another one goes on exactly.
    assert by_world[1] == by_world[2] == by_world[3] == by_world[4]
    assert pads > 0  # some rank had fewer micro batches and ran zero-weight forwards


def test_an_epoch_trains_each_example_once_and_only_its_last_step_is_short():
    plan, task, tokenizer, prepared, lengths = _setup()
    for budget_tokens in (64, 1024, 5000):
        order_lengths = lengths[data.epoch_order(len(lengths), 42, 3, True)]
        ends = budget.step_ends(order_lengths, 0, budget_tokens)
        assert ends[-1] == len(lengths)
        begins = [0, *ends[:-1]]
        for k, (b, e) in enumerate(zip(begins, ends)):
            tokens = int(order_lengths[b:e].sum())
            assert tokens <= budget_tokens
            if k < len(ends) - 1:
                assert tokens + int(order_lengths[e]) > budget_tokens
        # from a saved position the steps are the same as from the epoch's start
        assert budget.step_ends(order_lengths, ends[2], budget_tokens) == ends[3:]
    # micro batches: every example once, each within micro_tokens as laid out
    step = lengths[:200].tolist()
    for pack_to, multiple in ((None, 8), (64, 1)):
        groups = budget.micro_batches(step, 256, multiple, pack_to)
        assert sorted(sum(groups, [])) == list(range(200))
        for g in groups:
            if pack_to:
                from launcher.engine.packing import plan_rows
                assert len(plan_rows([step[i] for i in g], pack_to)) * pack_to <= 256
            else:
                assert len(g) * -(-max(step[i] for i in g) // multiple) * multiple <= 256


@pytest.mark.parametrize("overrides, field, words", [
    (["scale.tokens_per_step=4096", "scale.global_batch=64"], "scale.tokens_per_step",
     "scale.global_batch"),
    (["scale.micro_tokens=512"], "scale.micro_tokens", "scale.tokens_per_step"),
    (["scale.tokens_per_step=4096", "scale.micro_tokens=40"], "scale.micro_tokens", "64"),
    (["scale.tokens_per_step=4096", "scale.micro_tokens=100", "data.packing=true",
      "scale.compile=default"], "scale.micro_tokens", "256"),
    (["scale.tokens_per_step=32"], "scale.tokens_per_step", "data.max_length=64"),
    (["scale.tokens_per_step=4096", "data.streaming=true"], "scale.tokens_per_step",
     "data.streaming"),
    (["scale.tokens_per_step=4096", "scale.strategy=zero2"], "scale.tokens_per_step",
     "zero2"),
])
def test_impossible_budgets_are_refused_in_one_line(capsys, tmp_path, overrides, field, words):
    out = tmp_path / "run"
    rc = cli.main(["run", str(TINY), *overrides, f"run.output_dir={out}", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    line = " ".join(err.split())
    assert f"{field}:" in line and words in line and "Fix:" in line, line
    assert not out.exists()


def test_explain_says_steps_per_epoch_is_an_estimate(capsys, tmp_path):
    rc = cli.main(["run", str(TINY), "scale.tokens_per_step=1024", f"run.output_dir={tmp_path}/r",
                   "--explain", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    row = next(line for line in out.splitlines() if "plan.steps_per_epoch" in line)
    assert "estimate" in row, row
    plan = json.loads((tmp_path / "r" / "plan" / "plan.json").read_text())
    assert plan["steps_estimated"] and plan["tokens_per_step"] == 1024
    assert plan["micro_tokens"] == 32 * 64 and plan["global_batch"] == 0


# 7 or 8 micro batches a step: 2 and 3 ranks both run zero-weight forwards
RUN = ["scale.tokens_per_step=1024", "scale.micro_tokens=192", "run.epochs=1",
       "checkpoint.every=0", "eval.every=0", "eval.max_examples=16", "run.log_every=1",
       "run.trace_examples=true", "model.dropout=0.0", "model.classifier_dropout=0.0",
       "--nproc-per-node"]


def _launch(root: Path) -> dict:
    rows = (REPO / "data/tiny_news/train.jsonl").read_text().splitlines(keepends=True)[:400]
    (root / "train.jsonl").write_text("".join(rows))
    return {"chain": Chain(lambda chain: _budget_runs(chain, root))}


EARLY = Early("budget", _launch, reads=("budget_runs",))  # with the session: read late


def _budget_runs(chain: Chain, root) -> dict:
    """An uninterrupted 2-rank run and one stopped at step 3 or 4 (launched at once: they
    share nothing), then the stopped one resumed on 3 ranks."""
    ref, cut = RunDir(root / "ref"), RunDir(root / "cut")
    common = [f"data.train={root / 'train.jsonl'}"]
    done = chain.launch(["run", TINY, *common, f"run.output_dir={ref.root}", *RUN, "2"],
                        ["run", TINY, *common, f"run.output_dir={cut.root}", *RUN, "2"],
                        faults=(None, "at=step,step=3,rank=1,do=TERM"), OMP_NUM_THREADS="1")
    assert done[0].returncode == 0, done[0].stderr[-3000:]
    assert done[1].returncode == 75, done[1].stderr[-3000:]
    state = json.loads((cut.latest() / "trainer_state.json").read_text())
    (resumed,) = chain.launch(["resume", cut.root, "--nproc-per-node", "3"])
    return {"ref": ref, "cut": cut, "stopped_state": state, "resumed": resumed}


@pytest.fixture(scope="module")
def budget_runs(tmp_path_factory) -> dict:
    return EARLY.start(tmp_path_factory)["chain"].result()


def _ledger(rd: RunDir) -> dict[int, list[str]]:
    steps = defaultdict(list)
    for trace in rd.trace.glob("rank*.txt"):
        for line in trace.read_text().splitlines():
            step, example = line.split("\t")
            steps[int(step)].append(example)
    return {s: sorted(ids) for s, ids in steps.items()}


def test_preempted_on_2_ranks_resumed_on_3_trains_the_same_steps(budget_runs):
    """One epoch of 400 examples under a budget of 1,024 tokens (6 steps, the last short): an
    uninterrupted 2-rank run, and one preempted at step 3 or 4 and resumed on 3 ranks. Every
    example once, each step the same examples, and the same losses (one loss per step: the
    split does not matter; without dropout, whose masks follow the rank an example lands on)."""
    ref, cut, state = budget_runs["ref"], budget_runs["cut"], budget_runs["stopped_state"]
    saved = state["step"]  # the ranks agree on a signal one step later
    assert saved in (3, 4) and 0 < state["position"]["examples"] < 400
    proc = budget_runs["resumed"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _ledger(ref), _ledger(cut)
    assert a == b
    every = sorted(i for ids in b.values() for i in ids)
    assert len(every) == len(set(every)) == 400  # the whole epoch, each example once
    losses = [[json.loads(line)["loss"] for line in rd.metrics.read_text().splitlines()]
              for rd in (ref, cut)]
    assert len(losses[0]) == len(losses[1]) == len(a)
    assert losses[0][:saved] == losses[1][:saved]
    assert losses[1][saved:] == pytest.approx(losses[0][saved:], rel=1e-5)
