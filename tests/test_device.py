"""scale.device: what the plan trains on, why, and a cuda plan refused where there is no GPU.

This machine has no GPU (torch is the CPU build): that is the case the tests are about. The
refusal on real Slurm nodes is in tests/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY, cli_env
from launcher import cli
from launcher import plan as plan_mod
from launcher.executors import slurm
from launcher.plan.build import visible_gpus
from launcher.recipe.load import load

BERT_LARGE = REPO / "recipes" / "bert_large_ag_news.py"
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available() or visible_gpus(),
                                  reason="about a machine without GPU")


def _plan(recipe, *overrides):
    return plan_mod.build(load(recipe, list(overrides)))


@needs_no_gpu
def test_auto_resolves_by_executor_and_nodes_and_says_why():
    cases = {  # overrides -> (device, reason in --explain)
        (): ("cpu", "derived: no GPU on this machine"),
        ("run.executor=slurm",): ("cuda", "derived: run.executor is slurm"),
        ("scale.nodes=2",): ("cuda", "derived: scale.nodes is 2"),
        ("run.executor=slurm", "scale.device=cpu"): ("cpu", "CLI override"),
        ("scale.device=cuda",): ("cuda", "CLI override"),
    }
    for overrides, (device, why) in cases.items():
        plan = _plan(TINY, *overrides)
        assert plan.device == device, overrides
        assert plan.sources["scale.device"].startswith(why), (overrides, plan.sources)
    # the flagship recipe is for GPU nodes whatever machine renders it
    assert _plan(BERT_LARGE).device == "cuda"
    assert _plan(BERT_LARGE, "scale.device=cpu").device == "cpu"


def test_explain_shows_the_resolved_device_and_why(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert cli.main(["render", str(TINY), "--executor", "slurm", "--explain", "--out",
                     str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "scale.device" in line)
    assert "'cuda'" in row and "derived: run.executor is slurm" in row


@needs_no_gpu
def test_fp16_on_a_cpu_plan_is_refused_at_plan_time(capsys, tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["run", str(TINY), "scale.precision=fp16", f"run.output_dir={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and "scale.precision" in err and "cpu" in err and "Traceback" not in err
    assert not out.exists()


@needs_no_gpu
def test_local_cuda_plan_without_gpu_is_refused_before_launch(capsys, tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["run", str(TINY), "scale.device=cuda", f"run.output_dir={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and "scale.device" in err and "0 CUDA device(s) for 1 process" in err
    assert "CUDA_VISIBLE_DEVICES=" in err and not out.exists()


@needs_no_gpu
def test_engine_refuses_a_cuda_plan_with_one_line(tmp_path, capsys, monkeypatch):
    """launch.sh started by hand on a node without GPUs: the engine itself says no."""
    out = tmp_path / "run"
    assert cli.main(["run", str(TINY), "--executor", "slurm", "--dry-run",
                     f"run.output_dir={out}"]) == 0  # auto: cuda under Slurm
    env = dict(cli_env(), CUDA_VISIBLE_DEVICES="0,1", RANK="0")
    proc = subprocess.run([sys.executable, "-m", "launcher.engine", str(out / "plan" / "plan.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = lines[0]
    host = os.uname().nodename
    for part in (host, "CUDA_VISIBLE_DEVICES=0,1", "1 rank(s) on this node", "no CUDA device",
                 "run.executor is slurm", "scale.device=cpu"):
        assert part in line, (part, line)
    assert line.removeprefix("error: ") in (out / "logs" / "rank0.log").read_text()
    # nothing was built: no metrics, no checkpoint
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    monkeypatch.setenv("COLUMNS", "400")
    capsys.readouterr()
    assert cli.main(["status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "failed: rank 0" in status and "CUDA_VISIBLE_DEVICES=0,1" in status


def _sbatch_flags(plan) -> dict[str, str]:
    flags = {}
    for line in slurm.sbatch_script(plan).splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            flags[key] = value
    return flags


def test_slurm_request_follows_the_device():
    cuda = _sbatch_flags(_plan(TINY, "run.executor=slurm", "scale.procs_per_node=2",
                               "data.num_workers=3"))
    assert cuda["gpus-per-node"] == "2" and cuda["cpus-per-task"] == "8"  # 2 x (3 + 1)
    assert "mem" not in cuda
    cpu = _sbatch_flags(_plan(TINY, "run.executor=slurm", "scale.procs_per_node=2",
                              "scale.device=cpu"))
    assert "gpus-per-node" not in cpu and "gres" not in cpu and cpu["cpus-per-task"] == "2"
    mine = _sbatch_flags(_plan(TINY, "run.executor=slurm", "slurm.gpus_per_node=4",
                               "slurm.cpus_per_task=16", "slurm.mem=64G",
                               "scale.procs_per_node=4"))
    assert (mine["gpus-per-node"], mine["cpus-per-task"], mine["mem"]) == ("4", "16", "64G")
    # the step gets the CPUs too (Slurm 22.05's srun does not inherit them from the job)
    assert "--cpus-per-task=16" in slurm.sbatch_script(
        _plan(TINY, "run.executor=slurm", "slurm.cpus_per_task=16")).splitlines()[-1]


def test_gpu_requests_that_cannot_work_are_refused(monkeypatch):
    monkeypatch.setattr(slurm, "_partitions", lambda: [])  # no cluster needed for these
    for overrides, fix in (
            (["scale.device=cpu", "slurm.gpus_per_node=2"], "scale.device=cuda"),
            (["scale.procs_per_node=4", "slurm.gpus_per_node=2"], "slurm.gpus_per_node=4")):
        plan = _plan(TINY, "run.executor=slurm", *overrides)
        with pytest.raises(Exception) as err:
            slurm.SlurmExecutor().check(plan)
        assert "slurm.gpus_per_node" in str(err.value) and fix in err.value.one_line()


def test_plans_written_before_scale_device_still_load():
    plan = _plan(TINY)
    data = json.loads(plan.to_json())
    del data["device"]
    assert plan_mod.Plan.from_json(json.dumps(data)).device == "cpu"
