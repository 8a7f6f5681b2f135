"""Recipe options from the fine-tuning guides: class weights, freezing, an extra head layer,
early stopping with the best checkpoint kept and exported."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, TINY
from launcher.recipe.load import load
from launcher.run_dir import RunDir
from together import Early, finish_in_turn, in_turn, plan_run


def test_balanced_class_weights_are_counted_from_the_training_data(tmp_path, cli):
    from launcher import plan as plan_mod

    plan = plan_mod.build(load(REPO / "recipes/tiny_multilabel.py", []))
    rows = [json.loads(line) for line in (REPO / "data/tiny_multilabel/train.jsonl").read_text().splitlines()]
    counts = Counter(t for r in rows for t in r["labels"])
    expected = [(len(rows) - counts[t]) / counts[t] for t in plan.recipe.task.labels]
    assert plan.class_weights == expected

    single = plan_mod.build(load(TINY, ["task.class_weights=balanced"]))
    labels = Counter(json.loads(line)["label"] for line in
                     (REPO / "data/tiny_news/train.jsonl").read_text().splitlines())
    assert single.class_weights == [4000 / (4 * labels[i]) for i in range(4)]
    explicit = plan_mod.build(load(TINY, ["task.class_weights=1,2,3,4"]))
    assert explicit.class_weights == [1.0, 2.0, 3.0, 4.0]
    bad = cli("render", TINY, "task.class_weights=1,2", "--out", tmp_path / "p")  # in-process
    assert bad.returncode == 2 and "task.class_weights: has 2 weights for 4 labels" in bad.stderr


def test_freeze_encoder_trains_only_the_head():
    from launcher import tasks
    from launcher.engine.model import build_model

    recipe = load(TINY, ["model.freeze_encoder=true"]).recipe
    model = build_model(recipe.model, tasks.for_recipe(recipe))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier"}

    recipe = load(TINY, ["model.freeze_embeddings=true", "model.freeze_layers=1"]).recipe
    model = build_model(recipe.model, tasks.for_recipe(recipe))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(".embeddings." in n for n in frozen)
    assert any(".layer.0." in n for n in frozen) and not any(".layer.1." in n for n in frozen)


RUNS = {
    "head": ["model.head_hidden=32", "model.head_dropout=0.2", "task.label_smoothing=0.1",
             "run.epochs=1", "eval.max_examples=200", "checkpoint.every=0"],
    # A learning rate this small cannot move macro-F1: the first evaluation stays the best.
    "early": ["optim.lr=1e-12", "optim.warmup_ratio=0", "eval.every=10",
              "eval.early_stopping_patience=2", "checkpoint.every=0", "checkpoint.keep_last=1",
              "eval.max_examples=300"],
}
def _launch(root: Path) -> dict:
    """The two tiny_news runs, planned by `launcher run --dry-run` here and trained in turn in
    one process (together.in_turn)."""
    for name, extra in RUNS.items():
        plan_run(TINY, *extra, f"run.output_dir={root / name}")
    return {"root": root,
            "proc": in_turn(*(RunDir(root / name).plan for name in RUNS), background=True)}


EARLY = Early("options", _launch, reads=("runs",))  # with the session: this module is read late


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (run directory, what the runs printed) of the two runs."""
    started = EARLY.start(tmp_path_factory)
    done = finish_in_turn(started["proc"])
    return {name: (started["root"] / name, done.stdout) for name in RUNS}


def test_extra_head_layer_trains_exports_and_predicts(runs, cli):
    out, _ = runs["head"]
    rd = RunDir(out)
    config = json.loads((rd.final / "config.json").read_text())
    assert config["launcher_head"] == {"hidden": 32, "dropout": 0.2}
    proc = cli("predict", out, "--text", "Striker scores goal in cup final match")  # in-process
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["predicted"] == "Sports"


def test_early_stopping_keeps_and_exports_the_best_checkpoint(runs):
    out, stdout = runs["early"]
    assert "early stop at step 30" in stdout
    rd = RunDir(out)
    summary = json.loads(rd.summary.read_text())
    assert summary["steps"] == 30 and summary["best"]["step"] == 10
    assert rd.best() == rd.checkpoint(10) and rd.latest() == rd.checkpoint(30)
    assert sorted(p.name for p in rd.checkpoints.glob("step-*")) == ["step-0000010", "step-0000030"]


def test_schedules_warm_up_then_follow_their_shape():
    import torch

    from launcher.engine.optim import build_optimizer, build_scheduler

    def lrs(name: str) -> list[float]:
        cfg = load(TINY, [f"optim.scheduler={name}", "optim.lr=1e-3"]).recipe.optim
        opt = build_optimizer(torch.nn.Linear(2, 2), cfg)
        sched = build_scheduler(opt, cfg, warmup_steps=10, total_steps=100)
        seen = []
        for _ in range(100):
            seen.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return seen

    for name in ("linear", "cosine", "constant", "constant_with_warmup"):
        seen = lrs(name)
        assert seen[0] == 0 and seen[5] == 5e-4 and seen[10] == 1e-3, name
    linear, cosine, constant = lrs("linear"), lrs("cosine"), lrs("constant_with_warmup")
    assert constant[10:] == [1e-3] * 90
    assert abs(linear[55] - 5e-4) < 1e-12 and abs(cosine[55] - 5e-4) < 1e-12  # both halfway
    assert cosine[30] > linear[30] and cosine[80] < linear[80]  # cosine: slow, then fast
