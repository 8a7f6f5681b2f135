"""The tiny recipe through the real CLI: torchrun, 2 gloo ranks, engine, run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, decoded_per_epoch
from together import Early, finish, start
from launcher.run_dir import RunDir


def _launch(root: Path) -> dict:
    out = root / "tiny"
    return {"out": out, "proc": start(["run", TINY, "--nproc-per-node", "2",
                                       f"run.output_dir={out}", "run.trace_examples=true"],
                                      background=True)}


EARLY = Early("run", _launch, reads=("two_rank_run",))  # with the session: read late


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    started = EARLY.start(tmp_path_factory)
    proc = finish(started["proc"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return RunDir(started["out"]), proc


def test_two_ranks_read_disjoint_examples(two_rank_run):
    rd, _ = two_rank_run
    # trace lines are "step<TAB>example id"; 4000 rows, global batch 64: 62 steps an epoch
    # use 3968 rows, 1984 on each rank, each epoch in its own order.
    lines = [[line.split("\t") for line in (rd.trace / f"rank{r}.txt").read_text().splitlines()]
             for r in (0, 1)]
    for epoch in (0, 1):
        steps = range(62 * epoch + 1, 62 * epoch + 63)
        seen = [{i for s, i in rank if int(s) in steps} for rank in lines]
        assert len(seen[0]) == len(seen[1]) == 1984
        assert not seen[0] & seen[1], "the same example reached both ranks"
    first = [[i for s, i in rank if s == "1"] for rank in lines]
    assert first[0] != [f"tn-{2 * k:05d}" for k in range(32)], "epoch 0 is in file order"
    # Each rank decoded only its own rows: 1984 an epoch, not the file's 4000.
    assert decoded_per_epoch(rd) == [(r, e, 1984, 1984) for r in (0, 1) for e in (0, 1)]


def test_loss_goes_down_and_model_learns(two_rank_run):
    rd, _ = two_rank_run
    records = [json.loads(line) for line in rd.metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == [*range(10, 121, 10), 124]
    for r in records:
        assert {"step", "epoch", "loss", "lr", "samples_per_s", "tokens_per_s"} <= r.keys()
        assert r["padded_tokens_per_s"] >= r["tokens_per_s"] > 0
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    summary = json.loads(rd.summary.read_text())
    assert summary["world_size"] == 2
    assert summary["eval"]["examples"] == 1001  # every eval row scored once over both ranks
    assert summary["eval"]["accuracy"] > 0.8  # chance is 0.25


def test_run_directory_has_what_a_user_looks_for(two_rank_run):
    rd, proc = two_rank_run
    for f in ("plan.json", "accelerate.yaml", "launch.sh"):
        assert (rd.plan / f).is_file()
    assert rd.latest() == rd.checkpoint(124)
    assert sorted(p.name for p in rd.checkpoints.glob("step-*")) == ["step-0000100", "step-0000124"]
    assert (rd.final / "model.safetensors").is_file() and (rd.final / "tokenizer_config.json").is_file()
    assert (rd.eval / "step-0000124" / "metrics.json").is_file()
    assert list(rd.tensorboard.glob("events.out.tfevents.*"))
    assert rd.rank_log(0).is_file() and rd.rank_log(1).is_file()
    assert "Run summary" in proc.stdout and "eval macro-F1" in proc.stdout
    assert str(rd.root) in proc.stdout


def test_exported_model_loads_and_predicts(two_rank_run):
    rd, _ = two_rank_run
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rd.final)
    model = AutoModelForSequenceClassification.from_pretrained(rd.final).eval()
    batch = tok(["Striker scores goal in cup final match", "Shares and stocks fall as market profit drops"],
                return_tensors="pt", padding=True)
    with torch.no_grad():
        pred = model(**batch).logits.argmax(-1).tolist()
    assert [model.config.id2label[i] for i in pred] == ["Sports", "Business"]


def test_run_refuses_a_directory_that_holds_a_run(two_rank_run, cli):
    """A refusal stops before any process starts: in-process (test_resume.py meets the same
    refusal of a run directory from a real process)."""
    rd, _ = two_rank_run
    before = sorted(p.name for p in rd.checkpoints.iterdir())
    proc = cli("run", TINY, f"run.output_dir={rd.root}")
    assert proc.returncode == 2
    assert "run.output_dir" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in rd.checkpoints.iterdir()) == before
