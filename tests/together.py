"""Several `python -m launcher` processes at once, for launches that share nothing: most of a
tiny launch is start-up (imports, torchrun), which overlaps well even on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from conftest import REPO, cli_env


def start(args: list, fault: str | None = None, background: bool = False,
          **env: str) -> subprocess.Popen:
    """`python -m launcher ARGS` started, not waited for; `fault` is its LAUNCHER_FAULT
    (launcher/engine/faults.py); `env` adds variables (OMP_NUM_THREADS="1": one thread);
    `background`: it runs on what the rest of the suite leaves idle (see below)."""
    run_env = dict(cli_env(), **env)
    if fault:
        run_env["LAUNCHER_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "launcher", *map(str, args)], cwd=REPO,
                            env=_background_env(run_env) if background else run_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def torchrun(script: Path, nproc: int, *args: str, background: bool = False,
             **env: str) -> subprocess.Popen:
    """`python -m torch.distributed.run --standalone --nproc-per-node NPROC SCRIPT ARGS`
    started, not waited for, output and errors together on its stdout; `background` as in
    start."""
    run_env = dict(cli_env(), **env)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", str(nproc), str(script), *map(str, args)],
                            cwd=REPO, env=_background_env(run_env) if background else run_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=background)


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


# Background launches: started with the session (conftest.py's _early_launches) for a module
# that reads them late, they should train on the CPU that the tests before it leave idle (a
# fifth of the suite's time on 2 cores, while a test runs in-process or one launch starts up)
# and not slow those tests down. Nice 19 does that between processes; Linux's autogroups
# (CONFIG_SCHED_AUTOGROUP) share the CPU between sessions first, and torchrun is given a
# session of its own, and each rank another, so each of those groups gets nice 19 as well.
# Every process of the launch does both for itself as it starts (background/sitecustomize.py):
# watching the launch's process tree from here instead cost pytest ~2 ms of CPU a look, five
# looks a second for each launch, beside the foreground tests. Once a test waits for a
# background launch, nothing else wants the CPU and it runs at full speed.
_BACKGROUND_SITE = Path(__file__).resolve().parent / "background"


def _background_env(env: dict[str, str]) -> dict[str, str]:
    return dict(env, PYTHONPATH=os.pathsep.join(
        p for p in (str(_BACKGROUND_SITE), env.get("PYTHONPATH")) if p))


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL to `proc` and everything below it, for a launch a session ends without reading:
    a rank has a session of its own and outlives a killed torchrun."""
    try:
        tree = [*psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:  # ended already
        tree = []
    proc.kill()
    for child in tree:
        try:
            child.kill()
        except psutil.Error:
            pass
    proc.communicate()
