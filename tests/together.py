"""Several `python -m launcher` processes at once, for launches that share nothing: most of a
tiny launch is start-up (imports, torchrun), which overlaps well even on 2 cores."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import psutil

from conftest import REPO, cli_env, in_process
from train_in_turn import CELL


def start(args: list, fault: str | None = None, background: bool = False,
          base_env: dict[str, str] | None = None, **env: str) -> subprocess.Popen:
    """`python -m launcher ARGS` started, not waited for; `fault` is its LAUNCHER_FAULT
    (launcher/engine/faults.py); `env` adds variables (OMP_NUM_THREADS="1": one thread) to
    `base_env` (conftest.cli_env() unless given); `background`: it runs on what the rest of
    the suite leaves idle (see below)."""
    run_env = dict(cli_env() if base_env is None else base_env, **env)
    if fault:
        run_env["LAUNCHER_FAULT"] = fault
    return _popen([sys.executable, "-m", "launcher", *map(str, args)], run_env, background)


def torchrun(script: Path, nproc: int, *args: str, background: bool = False,
             **env: str) -> subprocess.Popen:
    """torchrun --standalone --nproc-per-node NPROC SCRIPT ARGS for one of the tests' own
    harnesses, its ranks forked from an agent that has imported what they import
    (tests/torchrun_forked.py: torchrun's own `--start-method fork --run-path`), started, not
    waited for, output and errors together on its stdout; `background` as in start."""
    return _popen([sys.executable, str(REPO / "tests" / "torchrun_forked.py"), "--standalone",
                   "--nproc-per-node", str(nproc), str(script), *map(str, args)],
                  dict(cli_env(), **env), background, merged=True,
                  start_new_session=background)


def in_turn(*plan_dirs: Path, nproc: int = 1, background: bool = False) -> subprocess.Popen:
    """The plans in PLAN_DIRS (written by `launcher run ... --dry-run`) trained one after the
    other by the engine's Trainer in one process group of NPROC ranks
    (tests/train_in_turn.py): one start-up, not one a run; one thread a rank. Started
    as torchrun is."""
    return torchrun(REPO / "tests" / "train_in_turn.py", nproc, *plan_dirs,
                    background=background, OMP_NUM_THREADS="1")


def finish_in_turn(proc: subprocess.Popen,
                   timeout: int = 600) -> subprocess.CompletedProcess:
    """What an in_turn process printed, once every cell has trained; its exit status checked
    to be 0 (on failure the end of its output, errors and all, is the message)."""
    done = finish(proc, timeout)
    assert done.returncode == 0, done.stdout[-8000:]
    return done


def plan_run(*args) -> str:
    """`launcher run ARGS --dry-run` in this process: the run's plan written as a launch writes
    it (for in_turn), checked to have been; what it printed."""
    rc, out, err = in_process("run", *args, "--dry-run")
    assert rc == 0 and "not launched (--dry-run)" in out, err
    return out


def cell_outputs(stdout: str) -> dict[str, str]:
    """What an in_turn process printed, by run directory: each cell's part of its output."""
    parts: dict[str, str] = {}
    run_dir = None
    for line in stdout.splitlines(keepends=True):
        if line.startswith(f"{CELL} "):  # tests/train_in_turn.py's line before each cell
            run_dir = line.split(" ", 1)[1].strip()
            parts[run_dir] = ""
        elif run_dir is not None:
            parts[run_dir] += line
    return parts


def _popen(command: list, env: dict[str, str], background: bool, merged: bool = False,
           **popen: Any) -> subprocess.Popen:
    if not background:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                                text=True, **popen)
    # Into files, not pipes: nobody reads a background launch until its test claims it, and
    # a pipe's 64 KiB of output would stop it there.
    out = tempfile.TemporaryFile("w+")
    err = None if merged else tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(command, cwd=REPO, env=_background_env(env), stdout=out,
                            stderr=subprocess.STDOUT if merged else err, text=True, **popen)
    proc.spooled = (out, err)  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: int = 600) -> subprocess.CompletedProcess:
    """What a started launch printed (stdout, and stderr unless it went to stdout) and its
    exit status, once it ends."""
    spooled = getattr(proc, "spooled", None)
    if spooled is None:
        out, err = proc.communicate(timeout=timeout)
    else:
        proc.wait(timeout=timeout)
        out, err = (_read_back(f) for f in spooled)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _read_back(spool: Any) -> str | None:
    if spool is None:
        return None
    spool.seek(0)
    text = spool.read()
    spool.close()
    return text


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
# session of its own, and each rank of a launch another (a harness's forked ranks stay in
# torchrun's), so each of those groups gets nice 19 as well.
# Every process of the launch does both for itself as it starts (launched/sitecustomize.py,
# which every launched process runs, when this variable is set): watching the launch's
# process tree from here instead cost pytest ~2 ms of CPU a look, five looks a second for each
# launch, beside the foreground tests. Once a test waits for a background launch, nothing else
# wants the CPU and it runs at full speed.
def _background_env(env: dict[str, str]) -> dict[str, str]:
    return dict(env, LAUNCHER_TESTS_BACKGROUND="1")


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL to `proc` and everything below it, for a launch a session ends without reading:
    a rank has a session of its own and outlives a killed torchrun. Nothing if it has ended."""
    if proc.poll() is not None:
        return
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
    proc.wait()


class Chain:
    """Launches that must run one after another (a run, then its resume), run in turn by a
    thread of this process in the background, for a module that reads them late: `work(chain)`
    makes them with `chain.launch(*runs, ...)` (launch_together's arguments: those runs at
    once, each finished) or `chain.in_turn(*plan_dirs, nproc=)`, and returns what the
    module's tests read; `result()` waits for it.
    `stop()` kills the launches under way and starts no more (a session that ended before
    reading them)."""

    def __init__(self, work: Callable[["Chain"], Any]):
        self._box: dict[str, Any] = {}
        self._procs: list[subprocess.Popen] = []
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[["Chain"], Any]) -> None:
        try:
            self._box["result"] = work(self)
        except BaseException as err:  # re-raised in result(), in the test that reads it
            self._box["error"] = err

    def launch(self, *runs: list, faults: tuple = (), timeout: int = 600,
               **kwargs: Any) -> list[subprocess.CompletedProcess]:
        procs = self._begin(lambda: [start(args, faults[i] if i < len(faults) else None,
                                           background=True, **kwargs)
                                     for i, args in enumerate(runs)])
        return [finish(proc, timeout) for proc in procs]

    def in_turn(self, *plan_dirs: Path, nproc: int = 1,
                timeout: int = 600) -> subprocess.CompletedProcess:
        """together.in_turn of PLAN_DIRS, in the background, finished and checked as
        finish_in_turn checks it: a step of the chain that is not a `launcher` launch."""
        proc, = self._begin(lambda: [in_turn(*plan_dirs, nproc=nproc, background=True)])
        return finish_in_turn(proc, timeout)

    def _begin(self, begin: Callable[[], list[subprocess.Popen]]) -> list[subprocess.Popen]:
        with self._lock:
            if self._stopped.is_set():
                raise RuntimeError("stopped before this launch")
            self._procs = begin()
            return self._procs

    def result(self, timeout: int = 1200) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the chain did not end in {timeout} s"
        if "error" in self._box:
            raise self._box["error"]
        return self._box["result"]

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            for proc in self._procs:
                kill_tree(proc)
        self._thread.join(60)


class Early:
    """What a module reads late, launched with the session in the background: conftest.py
    (`_early_launches`) starts it when a test that uses one of the fixtures named in `reads`
    is collected, and stops what is still running when the session ends; the fixture that
    reads it calls `start` too (a run of that module alone starts it there).

    `launch(root)` starts the launches under a fresh folder `root`, not waiting for them
    (start, torchrun or in_turn with background=True, or a Chain), and returns what the
    fixture reads: those Popens and Chains (or a dict of Popens) and anything else, by name.
    They train on what the tests before them leave idle of the 2 cores."""

    def __init__(self, name: str, launch: Callable[[Path], dict[str, Any]], *,
                 reads: tuple[str, ...]):
        self.name, self.reads, self._launch = name, reads, launch
        self._started: dict[str, Any] | None = None

    def start(self, tmp_path_factory) -> dict[str, Any]:
        if self._started is None:
            self._started = self._launch(tmp_path_factory.mktemp(self.name))
        return self._started

    def stop(self) -> None:
        for value in (self._started or {}).values():
            for item in (value.values() if isinstance(value, dict) else (value,)):
                if isinstance(item, Chain):
                    item.stop()
                elif isinstance(item, subprocess.Popen):
                    kill_tree(item)
