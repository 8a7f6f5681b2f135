"""micro 4 x accumulation 2 must train the same weights as micro 8 x accumulation 1.

Each run's plan is written by `launcher run --dry-run` in this process, from the tiny recipe
and the overrides a user would give; the three plans then train in turn in one process under
torchrun through the engine's own Trainer (tests/train_in_turn.py): a launch each would
be nearly all start-up for 2 steps. Step by step, the splits of a step are compared in
tests/test_step_loss.py; here the whole loop (stream, scheduler, export) runs them.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from conftest import TINY
from together import finish_in_turn, in_turn, plan_run
from launcher.run_dir import RunDir


def _overrides(out, micro: int, accum: int) -> list:
    return [f"run.output_dir={out}", "run.max_steps=2", "run.epochs=none",
            f"scale.micro_batch={micro}", f"scale.grad_accum={accum}", "scale.precision=fp32",
            "model.dropout=0.0", "model.classifier_dropout=0.0", "optim.warmup_ratio=0",
            # A large epsilon makes AdamW's step proportional to the gradient: a mis-scaled
            # accumulated gradient would otherwise be normalised away by Adam's first steps.
            "optim.eps=1.0", "optim.lr=0.05", "eval.max_examples=8"]


def _train_all(tmp_path, **runs: tuple[int, int]) -> dict[str, dict[str, torch.Tensor]]:
    plan_dirs = []
    for name, (micro, accum) in runs.items():
        plan_run(TINY, *_overrides(tmp_path / name, micro, accum))
        plan_dirs.append(RunDir(tmp_path / name).plan)
    finish_in_turn(in_turn(*plan_dirs))
    return {name: load_file(tmp_path / name / "final" / "model.safetensors") for name in runs}


def test_accumulation_matches_a_bigger_micro_batch(tmp_path):
    trained = _train_all(tmp_path, accum=(4, 2), single=(8, 1), fewer=(4, 1))
    accumulated, single, fewer = trained["accum"], trained["single"], trained["fewer"]
    assert accumulated.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(accumulated[key], single[key], rtol=0, atol=1e-5, msg=key)
    # ...and the comparison can fail: half the data gives different weights.
    assert max((fewer[k] - single[k]).abs().max().item() for k in single) > 1e-3
