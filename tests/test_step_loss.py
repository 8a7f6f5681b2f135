"""One loss per optimizer step: a labelled unit weighs the same however the step is split.

The engine's real step (tests/step_harness.py under torchrun, gloo, fp32) runs 2 optimizer
steps of global batch 16, split as ranks x accumulation x micro batch 1 x 4 x 4, 1 x 1 x 16
(the whole step in one forward), 2 x 2 x 4 and 2 x 1 x 8 (across ranks only): NER with
balanced class weights (mostly 'O' tags, so far from uniform), news classification with
explicit class weights and label smoothing, packed and not, and QA with 3 or 4 windows per
example. Every
split gives the same step losses and gradients; the per-micro-batch means the engine used to
train on would not have.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from together import Early, finish, torchrun
from launcher import tasks
from launcher.engine.window import LogWindow
from launcher.recipe.load import load

WORLDS = (1, 2)
# (world, micro batch): the reference (accumulation only), then the whole step in one forward,
# across ranks and accumulation, across ranks only
SPLITS = ((1, 4), (1, 16), (2, 4), (2, 8))
CASES = ("ner_balanced", "news_weighted", "news_weighted_packed", "qa")
TOL = 1e-6


def _launch(out: Path) -> dict:
    """The two launches share nothing: both at once."""
    return {"out": out, "procs": {
        n: torchrun(REPO / "tests" / "step_harness.py", n, out, background=True,
                    OMP_NUM_THREADS="1") for n in WORLDS}}


EARLY = Early("step_loss", _launch, reads=("results",))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[int, int], dict]:
    started = EARLY.start(tmp_path_factory)
    for n, proc in started["procs"].items():
        output = finish(proc, timeout=600).stdout
        assert proc.returncode == 0, f"{n} ranks:\n{output[-4000:]}"
    by_world = {n: torch.load(started["out"] / f"world{n}.pt", weights_only=True)
                for n in WORLDS}
    return {(n, micro): {case: by_world[n][case][micro] for case in CASES}
            for n, micro in SPLITS}


@pytest.mark.parametrize("case", CASES)
def test_step_loss_and_gradients_are_the_same_at_every_split(results, case):
    one = results[SPLITS[0]][case]
    assert len(one["loss"]) == len(one["grads"]) == 2
    for n in SPLITS[1:]:
        other = results[n][case]
        for step in range(2):
            assert abs(other["loss"][step] - one["loss"][step]) <= TOL, (n, step)
            a, b = one["grads"][step], other["grads"][step]
            assert a.keys() == b.keys() and len(a) > 30
            for name in a:
                # 1e-6, relative to the tensor's scale where that is above 1 (QA's).
                off = float((a[name] - b[name]).abs().max())
                assert off <= TOL * max(1.0, float(a[name].abs().max())), (n, step, name, off)
    # ...and the comparison can fail: the mean of per-micro-batch means moves with the split.
    moved = max(abs(results[n][case]["old_loss"][s] - one["old_loss"][s])
                for n in SPLITS[1:] for s in range(2))
    assert moved > 1e-4, moved


def test_packing_trains_on_the_same_step_loss(results):
    for n in SPLITS:
        plain, packed = results[n]["news_weighted"], results[n]["news_weighted_packed"]
        assert max(abs(a - b) for a, b in zip(plain["loss"], packed["loss"])) <= 1e-5


def _task(recipe: str, *overrides: str) -> tasks.Task:
    return tasks.for_recipe(load(REPO / "recipes" / recipe, list(overrides)).recipe)


def test_one_micro_batch_loss_is_the_usual_mean():
    """On one micro batch, loss_sum / units is PyTorch's own mean: weights, smoothing and
    ignored tokens normalised as before."""
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([0.25, 1.0, 2.0, 4.0])
    news = _task("tiny_news.py", "task.label_smoothing=0.1")
    logits, labels = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 1, 3, 2, 3])
    out = SimpleNamespace(logits=logits)
    for weights in (None, w):
        mean = F.cross_entropy(logits, labels, weight=weights, label_smoothing=0.1)
        got = news.loss_sum(out, labels, weights) / news.units(labels, weights)
        assert float(got) == pytest.approx(float(mean), rel=1e-6)

    ner = _task("tiny_ner.py", "task.label_smoothing=0.1")
    logits = torch.randn(2, 5, 9, generator=g)
    tags = torch.tensor([[-100, 0, 3, 4, -100], [-100, 1, -100, -100, -100]])
    out = SimpleNamespace(logits=logits)
    for weights in (None, torch.linspace(0.5, 4.5, 9)):
        mean = F.cross_entropy(logits.view(-1, 9), tags.view(-1), weight=weights,
                               ignore_index=-100, label_smoothing=0.1)
        got = ner.loss_sum(out, tags, weights) / ner.units(tags, weights)
        assert float(got) == pytest.approx(float(mean), rel=1e-6)
    assert float(ner.units(tags, None)) == 4

    multi = _task("tiny_multilabel.py")
    logits, hot = torch.randn(3, 5, generator=g), torch.tensor([[1., 0, 0, 1, 0]] * 3)
    out = SimpleNamespace(logits=logits)
    for weights in (None, torch.full((5,), 3.0)):
        mean = F.binary_cross_entropy_with_logits(logits, hot, pos_weight=weights)
        got = multi.loss_sum(out, hot, weights) / multi.units(hot, weights)
        assert float(got) == pytest.approx(float(mean), rel=1e-6)

    qa = _task("tiny_qa.py")
    out = SimpleNamespace(start_logits=torch.randn(3, 8, generator=g),
                          end_logits=torch.randn(3, 8, generator=g))
    spans = torch.tensor([[0, 0], [2, 4], [5, 5]])
    mean = (F.cross_entropy(out.start_logits, spans[:, 0]) +
            F.cross_entropy(out.end_logits, spans[:, 1])) / 2
    assert float(qa.loss_sum(out, spans, None) / qa.units(spans, None)) == \
        pytest.approx(float(mean), rel=1e-6)


class _OneRank:
    @staticmethod
    def reduce(t, reduction):
        return t


def test_log_window_averages_step_losses_and_reads_an_older_checkpoints_window():
    window = LogWindow(torch.device("cpu"))
    # Written before per-step losses: 6 micro-batch means summing to 6.0, 2 micro batches
    # (over all ranks) per step: 3 steps of mean loss 1.0.
    window.restore({"loss_sum": 6.0, "micro_batches": 6}, micro_batches_per_step=2)
    window.add_step_loss(torch.tensor(2.0, dtype=torch.float64))
    assert window.totals(_OneRank)["loss"] == pytest.approx((3 * 1.0 + 2.0) / 4)
    assert window.partial(_OneRank) == {"loss_sum": 5.0, "steps": 4.0}
    again = LogWindow(torch.device("cpu"))
    again.restore(window.partial(_OneRank), micro_batches_per_step=2)
    again.add_step_loss(torch.tensor(0.0, dtype=torch.float64))
    assert again.totals(_OneRank)["loss"] == pytest.approx(5.0 / 5)
