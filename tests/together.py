"""Several `python -m launcher` processes at once, for launches that share nothing: most of a
tiny launch is start-up (imports, torchrun), which overlaps well even on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
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
    proc = subprocess.Popen([sys.executable, "-m", "launcher", *map(str, args)], cwd=REPO,
                            env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if background:
        _lowest(proc.pid)
        threading.Thread(target=_keep_low, args=(proc,), daemon=True).start()
    return proc


def torchrun(script: Path, nproc: int, *args: str, background: bool = False,
             **env: str) -> subprocess.Popen:
    """`python -m torch.distributed.run --standalone --nproc-per-node NPROC SCRIPT ARGS`
    started, not waited for, output and errors together on its stdout; `background` as in
    start."""
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", str(nproc), str(script), *map(str, args)],
                            cwd=REPO, env=dict(cli_env(), **env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            start_new_session=background)
    if background:
        _lowest(proc.pid)
        threading.Thread(target=_keep_low, args=(proc,), daemon=True).start()
    return proc


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
# Once a test waits for a background launch, nothing else wants the CPU and it runs at full
# speed.
def _lowest(pid: int) -> None:
    # Set from here, not in the child before exec (preexec_fn is unsafe beside threads): the
    # child takes a fraction of a second to start anything, which then inherits it.
    os.setpriority(os.PRIO_PROCESS, pid, 19)


def _idle_only(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/autogroup", "w") as group:
            group.write("19")
    except OSError:  # no autogroups here: nice alone does it
        pass


def _keep_low(proc: subprocess.Popen) -> None:
    """Every session of `proc` and below it other than this one's (torchrun's, each rank's)
    gets nice 19, until `proc` ends; they start over the first seconds, so this looks five
    times a second."""
    mine, lowered = os.getsid(0), set()
    while proc.poll() is None:
        try:
            top = psutil.Process(proc.pid)
            for child in [top, *top.children(recursive=True)]:
                session = os.getsid(child.pid)
                if session != mine and session not in lowered:
                    _idle_only(child.pid)
                    lowered.add(session)
        except (OSError, psutil.Error):  # a process that just ended
            pass
        time.sleep(0.2)


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
