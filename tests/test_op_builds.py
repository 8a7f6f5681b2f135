"""A build lock a killed op build left behind (launcher/op_builds.py): DeepSpeed's op loads would
wait on it forever, so `run`, `resume` and `sweep` refuse a ZeRO plan with one line naming the
lock, its age and the fix, exit 2, nothing written; the engine (where a requeued Slurm job
starts) refuses with the same line before DeepSpeed is set up. A young lock is another job's
build in progress, and a DDP or FSDP plan loads no DeepSpeed op: neither is refused.

All in-process: the CLI through `launcher.cli.main` (conftest.cli), the engine through
`launcher.engine.main.main`, as torchrun's rank 0 would call it, no torchrun.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from conftest import TINY
from launcher import op_builds

HOURS = 3600


@pytest.fixture
def ext(tmp_path, monkeypatch) -> Path:
    """The build root torch would use: TORCH_EXTENSIONS_DIR, as .ci/run and clusters set it."""
    root = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    return root


def _lock(directory: Path, age_s: float) -> Path:
    """An empty lock file as torch's FileBaton makes it, `age_s` seconds old."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / "lock"
    os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
    when = time.time() - age_s
    os.utime(lock, (when, when))
    return lock


def _refusal(result, lock: Path) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    line = lines[0]
    assert "Traceback" not in result.stderr
    for part in (str(lock), "2 h old", "no build is running: delete it", "run again"):
        assert part in line, (part, line)
    return line


def test_stale_lock_refuses_zero_run_resume_and_sweep_with_one_line(cli, ext, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "run"
    # Another job's build in progress: waited on, not refused (--dry-run: nothing launches).
    lock = _lock(ext / "deepspeed_shm_comm", age_s=60)
    young = cli("run", TINY, "scale.strategy=zero2", "--dry-run", f"run.output_dir={out}")
    assert young.returncode == 0, young.stderr
    assert (out / "plan" / "deepspeed.json").is_file()

    # The same lock, left by a build killed two hours ago.
    os.utime(lock, (time.time() - 2 * HOURS,) * 2)
    fresh = tmp_path / "fresh"
    line = _refusal(cli("run", TINY, "scale.strategy=zero3", "--dry-run",
                        f"run.output_dir={fresh}"), lock)
    assert "scale.strategy: is zero3 (DeepSpeed)" in line
    assert not fresh.exists()  # nothing written

    # `resume` of the run planned above: refused the same way, its run directory as it was.
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    _refusal(cli("resume", out), lock)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before

    # `sweep`: a point on ZeRO is refused before any point runs or anything is written.
    from launcher.commands import sweep

    monkeypatch.setattr(sweep, "_locally", lambda *a: pytest.fail("the sweep launched"))
    root = tmp_path / "sweep"
    _refusal(cli("sweep", TINY, "scale.strategy=ddp,zero1", "--out", root), lock)
    assert not root.exists()


def test_ddp_and_fsdp_plans_are_not_refused_for_a_stale_lock(cli, ext, tmp_path):
    _lock(ext / "deepspeed_shm_comm", age_s=2 * HOURS)
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        result = cli("run", TINY, f"scale.strategy={strategy}", "--dry-run",
                     f"run.output_dir={out}")
        assert result.returncode == 0 and "lock" not in result.stderr, result.stderr
        assert (out / "plan" / "plan.json").is_file()


def test_engine_refuses_with_the_cli_line_before_deepspeed_is_set_up(cli, ext, tmp_path,
                                                                     monkeypatch, capsys):
    """A requeued job does not pass `launcher run`: each rank's engine finds the lock itself."""
    out = tmp_path / "run"
    assert cli("run", TINY, "scale.strategy=zero2", "scale.device=cpu", "--dry-run",
               f"run.output_dir={out}").returncode == 0
    lock = _lock(ext / "cpu_adam", age_s=2 * HOURS)
    said = cli("run", TINY, "scale.strategy=zero2", "--dry-run",
               f"run.output_dir={tmp_path / 'other'}")
    cli_line = _refusal(said, lock).removeprefix("error: ")

    from launcher.engine import main as engine

    monkeypatch.setenv("RANK", "0")
    capsys.readouterr()
    handlers = list(logging.getLogger("launcher").handlers)
    try:
        rc = engine.main([str(out / "plan" / "plan.json")])
    finally:  # the rank's log handler engine.main adds to this process's logger
        for handler in logging.getLogger("launcher").handlers:
            if handler not in handlers:
                logging.getLogger("launcher").removeHandler(handler)
                handler.close()
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [f"error: {cli_line}"], err
    assert (out / "logs" / "rank0.error").read_text() == f"{cli_line}\n"  # `launcher status`
    assert f"refused: {cli_line}" in (out / "logs" / "rank0.log").read_text()
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize("given", [True, False], ids=["TORCH_EXTENSIONS_DIR", "default-root"])
def test_locks_are_looked_for_where_torch_builds(given, tmp_path, monkeypatch):
    """The directory torch's JIT build takes its lock in (cpp_extension._get_build_directory,
    the default root with its py311_cpu-like folder under XDG_CACHE_HOME) is where
    op_builds looks, without importing torch."""
    from torch.utils import cpp_extension

    if given:
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    else:
        monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    build = Path(cpp_extension._get_build_directory("deepspeed_shm_comm", verbose=False))
    assert build.is_relative_to(tmp_path)
    lock = _lock(build, age_s=op_builds.STALE_AFTER_S + 60)
    _lock(build.parent / "cpu_adam", age_s=op_builds.STALE_AFTER_S - 60)  # a build under way
    assert [path for path, _ in op_builds.stale_locks()] == [lock]
