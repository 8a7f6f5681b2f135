"""Several `python -m launcher` processes at once, for launches that share nothing: most of a
tiny launch is start-up (imports, torchrun), which overlaps well even on 2 cores."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, cli_env


def start(args: list, fault: str | None = None, **env: str) -> subprocess.Popen:
    """`python -m launcher ARGS` started, not waited for; `fault` is its LAUNCHER_FAULT
    (launcher/engine/faults.py); `env` adds variables (OMP_NUM_THREADS="1": one thread)."""
    run_env = dict(cli_env(), **env)
    if fault:
        run_env["LAUNCHER_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "launcher", *map(str, args)], cwd=REPO,
                            env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen, timeout: int = 600) -> subprocess.CompletedProcess:
    """What a started launch printed and its exit status, once it ends."""
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def launch_together(*runs: list, faults: tuple = (), timeout: int = 600,
                    **env: str) -> list[subprocess.CompletedProcess]:
    """Each of `runs` is the argument list of one `python -m launcher`, as conftest.launcher
    takes it; faults[i], where given, is run i's LAUNCHER_FAULT; `env` adds variables to every
    one (OMP_NUM_THREADS="1": one thread each)."""
    procs = [start(args, faults[i] if i < len(faults) else None, **env)
             for i, args in enumerate(runs)]
    return [finish(proc, timeout) for proc in procs]
