"""The training stream resumes at a position without replaying what came before it."""

from __future__ import annotations

import json

import pytest

from launcher import plan as plan_mod
from launcher import tasks
from launcher.engine.data import Position, train_batches
from launcher.engine.model import build_tokenizer
from launcher.recipe.load import load

from conftest import TINY

STEPS = (10, 2_000)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """A 72,000-row JSONL file read as a streamed dataset, 2 ranks of 16: 32 a step."""
    path = tmp_path_factory.mktemp("big") / "train.jsonl"
    words = ["market", "goal", "vote", "chip", "storm", "team", "bank", "law"]
    with path.open("w") as fh:
        for i in range(72_000):
            text = " ".join(words[(i * 7 + k) % 8] for k in range(12 + i % 9))
            fh.write(json.dumps({"id": f"ex{i}", "text": text, "label": i % 4}) + "\n")
    plan = plan_mod.build(load(TINY, [f"data.train={path}", "data.eval=None",
                                      "scale.micro_batch=16", "scale.procs_per_node=2",
                                      "data.streaming=true", "data.shuffle=false",
                                      "run.epochs=None", "run.max_steps=2200"]))
    assert plan.recipe.data.streaming and plan.global_batch == 32
    task = tasks.for_recipe(plan.recipe)
    return plan, task, build_tokenizer(plan.recipe.model)


def _first_batch(streamed, step: int, monkeypatch) -> tuple[int, list[str], int]:
    """(rows HF turned into Python objects, the first batch's ids, rows tokenized) for the
    first micro batch from `step`."""
    from datasets.formatting.formatting import PythonArrowExtractor

    plan, task, tokenizer = streamed
    encoded, made_python = [], []
    encode = task.encode

    def counting(rows, *args, **kwargs):
        encoded.append(len(rows))
        return encode(rows, *args, **kwargs)

    # Every Arrow row HF hands out as a Python object passes through this extractor, whether
    # as a batch (the arrow path) or one row at a time (a skip done in Python would be).
    with monkeypatch.context() as m:
        m.setattr(task, "encode", counting)
        for name in ("extract_row", "extract_batch"):
            real = getattr(PythonArrowExtractor, name)
            m.setattr(PythonArrowExtractor, name,
                      lambda self, table, _real=real: (made_python.append(table.num_rows),
                                                       _real(self, table))[1])
        start = Position(epoch=0, row=step * 32, examples=step * 32)
        position, batch = next(train_batches(plan, task, tokenizer, rank=1, world=2, start=start))
    assert position == Position(epoch=0, row=step * 32 + 32, examples=step * 32 + 32)
    return sum(made_python), list(batch["ids"]), sum(encoded)


def test_resuming_reads_the_very_next_examples_and_encodes_nothing_before(streamed, monkeypatch):
    for step in STEPS:
        _, ids, encoded = _first_batch(streamed, step, monkeypatch)
        # rank 1 of 2 takes every other example of the step's 32, from the second on
        assert ids == [f"ex{step * 32 + 1 + 2 * k}" for k in range(16)]
        assert encoded == 16  # its own micro batch; nothing skipped was tokenized


def test_resume_at_step_2000_turns_no_more_rows_into_python_than_at_step_10(streamed,
                                                                            monkeypatch):
    """Skipping is on HF's arrow path: no row before the position becomes a Python object, so
    the first batch at step 2,000 (64,000 rows in) costs what it costs at step 10. Counted in
    rows, not seconds."""
    near, far = (_first_batch(streamed, step, monkeypatch)[0] for step in STEPS)
    print(f"rows made Python objects for the first batch: at step 10 {near}, at 2,000 {far}")
    assert 32 <= near and far == near, (near, far)
    assert far < 10 * 32 * 10, "rows before the position were turned into Python"
