"""`launcher eval` and `launcher predict` run on the plan's resolved scale.device, as training
did: a cpu plan evaluates on CPU even where a GPU is visible, and a cuda plan on a machine
without the GPUs is refused with the line `launcher run` gives. In process, on a finished run
made here (the tiny recipe's fresh model exported, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY
from launcher import cli, tasks
from launcher.engine import eval_main
from launcher.engine.model import build_model, build_tokenizer
from launcher.plan.build import build, visible_gpus
from launcher.plan.render import write as write_plan
from launcher.recipe.load import load
from launcher.run_dir import RunDir


def _finished_run(root: Path, *overrides: str) -> RunDir:
    rd = RunDir(root / "run")
    plan = build(load(TINY, ["eval.max_examples=32", *overrides]), run_dir=str(rd.root))
    write_plan(plan, rd.plan)
    task = tasks.for_recipe(plan.recipe)
    build_model(plan.recipe.model, task).save_pretrained(rd.final)
    build_tokenizer(plan.recipe.model).save_pretrained(rd.final)
    return rd


def test_cpu_plan_evaluates_on_cpu_where_a_gpu_is_visible(tmp_path, monkeypatch):
    rd = _finished_run(tmp_path, "scale.device=cpu")

    def no_cuda(*_args, **_kwargs):
        raise AssertionError("a cpu plan touched CUDA")

    # What torch says on a GPU node; anything that then really used CUDA fails.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", no_cuda)
    metrics = eval_main.run_eval(rd.root, None, None, "final-on-eval")
    assert metrics["examples"] == 32
    assert json.loads((rd.eval / "final-on-eval" / "metrics.json").read_text())["examples"] == 32
    out = eval_main.predict(rd.root, None, [{"text": "Striker scores in cup final"}])
    assert out[0]["predicted"] in ("World", "Sports", "Business", "Sci/Tech")


@pytest.mark.skipif(torch.cuda.is_available() or visible_gpus(), reason="needs a machine "
                    "without GPU")
def test_cuda_plan_without_gpu_is_refused_as_run_refuses_it(tmp_path, capsys):
    rd = _finished_run(tmp_path, "scale.device=cuda")
    assert cli.main(["run", str(TINY), "scale.device=cuda",
                     f"run.output_dir={tmp_path / 'other'}"]) == 2
    run_line = capsys.readouterr().err.strip()
    assert "scale.device" in run_line and "0 CUDA device(s) for 1 process" in run_line
    before = sorted(p.relative_to(rd.root).as_posix() for p in rd.root.rglob("*"))
    for command in (["eval", str(rd.root)], ["predict", str(rd.root), "--text", "a text"]):
        assert cli.main(command) == 2
        captured = capsys.readouterr()
        assert captured.err.strip() == run_line and not captured.out, command
    assert sorted(p.relative_to(rd.root).as_posix() for p in rd.root.rglob("*")) == before
