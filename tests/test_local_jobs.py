"""`launcher status | logs | cancel RUN_DIR` for a run on this machine, as for a Slurm job.

The local executor records its launcher process in RUN_DIR/local_job.json while it runs;
status reads it (and the run directory) and cancel sends that process SIGTERM, which lets every
rank save its step and exit. Here every state is a run directory made here, with no launch; a
real 2-rank run cancelled, its status read and resumed is in tests/test_resume.py
(test_cancel_a_local_run_then_resume), where that launch also serves the resume on another
world size.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import TINY
from launcher import cli
from launcher import plan as plan_mod
from launcher.recipe.load import load
from launcher.run_dir import RunDir


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich's tables unwrapped, one row a line


def status(run_dir, capsys) -> str:
    assert cli.main(["status", str(run_dir)]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> RunDir:
    """A run directory with its plan written and nothing run."""
    out = tmp_path_factory.mktemp("planned") / "run"
    plan = plan_mod.build(load(TINY, [f"run.output_dir={out}", "run.max_steps=10",
                                      "run.epochs=None"]))
    plan_mod.write(plan, RunDir(out).plan)
    return RunDir(out)


@pytest.fixture
def rd(planned, tmp_path) -> RunDir:
    """A copy of the planned run directory (plan.json keeps naming the original: status and
    cancel read the directory they are given)."""
    shutil.copytree(planned.root, tmp_path / "run")
    rd = RunDir(tmp_path / "run")
    rd.logs.mkdir(exist_ok=True)
    return rd


def _metrics(rd: RunDir, step: int) -> None:
    rd.metrics.write_text(json.dumps({"step": step, "epoch": 0, "loss": 1.25, "lr": 1e-3,
                                      "samples_per_s": 100.0}) + "\n")


def _record(rd: RunDir, pid: int, created: float, host: str | None = None, **extra) -> None:
    rd.local_job.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                        "created": created, **extra}))


def test_status_of_local_run_dirs(rd, capsys):
    out = status(rd.root, capsys)
    assert "not started" in out and "no step logged yet" in out

    import psutil
    me = psutil.Process()
    _record(rd, me.pid, me.create_time())
    _metrics(rd, 4)
    out = status(rd.root, capsys)
    assert "running" in out and f"pid {me.pid}" in out and "4 of 10" in out

    # A launcher gone without recording its end (SIGKILL, a crash): stopped, not running.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _record(rd, dead.pid, time.time() - 5)
    out = status(rd.root, capsys)
    assert "stopped without a summary" in out and "launcher resume" in out

    rd.rank_error(1).write_text("Traceback ...\nValueError: label 'Politics' is not a label\n")
    _record(rd, me.pid, me.create_time(), ended=time.time())
    out = status(rd.root, capsys)
    assert "failed: rank 1: ValueError: label 'Politics'" in out

    rd.rank_error(1).unlink()
    rd.summary.write_text(json.dumps({"steps": 10}))
    _metrics(rd, 10)
    out = status(rd.root, capsys)
    assert "finished" in out and "10 of 10" in out and "ETA" not in out


def test_cancel_refuses_a_run_not_running_here(rd, capsys):
    assert cli.main(["cancel", str(rd.root)]) == 2
    assert "is not running here" in capsys.readouterr().err
    _record(rd, 1, 0.0, host="another-node")
    assert cli.main(["cancel", str(rd.root)]) == 2
    err = capsys.readouterr().err
    assert "was started on another-node" in err and "on another-node" in err
    assert len(err.strip().splitlines()) == 1


def test_logs_of_a_local_run(rd, capsys):
    rd.rank_log(1).write_text("rank 1 of 2: hello\n")
    assert cli.main(["logs", str(rd.root), "--rank", "1"]) == 0
    assert capsys.readouterr().out == "rank 1 of 2: hello\n"
    assert cli.main(["logs", str(rd.root), "--rank", "3"]) == 2
    assert "use one of ['rank1']" in capsys.readouterr().err
