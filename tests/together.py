"""Several `python -m launcher` processes at once, for launches that share nothing: most of a
tiny launch is start-up (imports, torchrun), which overlaps well even on 2 cores."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, cli_env


def launch_together(*runs: list, faults: tuple = (), timeout: int = 600,
                    **env: str) -> list[subprocess.CompletedProcess]:
    """Each of `runs` is the argument list of one `python -m launcher`, as conftest.launcher
    takes it; faults[i], where given, is run i's LAUNCHER_FAULT; `env` adds variables to every
    one (OMP_NUM_THREADS="1": one thread each)."""
    procs = []
    for i, args in enumerate(runs):
        run_env = dict(cli_env(), **env)
        if i < len(faults) and faults[i]:
            run_env["LAUNCHER_FAULT"] = faults[i]
        procs.append(subprocess.Popen([sys.executable, "-m", "launcher", *map(str, args)],
                                      cwd=REPO, env=run_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    done = []
    for args, proc in zip(runs, procs):
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess([sys.executable, "-m", "launcher", *args],
                                                proc.returncode, out, err))
    return done
