"""micro 4 x accumulation 2 must train the same weights as micro 8 x accumulation 1."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from conftest import TINY, launcher


def _train(tmp_path, name: str, micro: int, accum: int) -> dict[str, torch.Tensor]:
    out = tmp_path / name
    proc = launcher(
        "run", TINY, f"run.output_dir={out}", "run.max_steps=2", "run.epochs=none",
        f"scale.micro_batch={micro}", f"scale.grad_accum={accum}", "scale.precision=fp32",
        "model.dropout=0.0", "model.classifier_dropout=0.0", "optim.warmup_ratio=0",
        # A large epsilon makes AdamW's step proportional to the gradient: a mis-scaled
        # accumulated gradient would otherwise be normalised away by Adam's first steps.
        "optim.eps=1.0", "optim.lr=0.05", "eval.max_examples=8")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return load_file(out / "final" / "model.safetensors")


def test_accumulation_matches_a_bigger_micro_batch(tmp_path):
    accumulated = _train(tmp_path, "accum", micro=4, accum=2)
    single = _train(tmp_path, "single", micro=8, accum=1)
    fewer = _train(tmp_path, "fewer", micro=4, accum=1)
    assert accumulated.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(accumulated[key], single[key], rtol=0, atol=1e-5, msg=key)
    # ...and the comparison can fail: half the data gives different weights.
    assert max((fewer[k] - single[k]).abs().max().item() for k in single) > 1e-3
