"""Run a plan on this machine: torchrun with N processes, rank 0 live on the terminal.

stdout is inherited so rank 0's progress bar stays live (rich needs a terminal); stderr is
relayed line by line (and kept in RUN_DIR/logs/torchrun.log) so that, when a rank dies,
torchrun's own failure summary can be read to name the rank even if it died too hard to write
its own error file.

Signals: torchrun runs in a session of its own, so the terminal's Ctrl-C reaches this process
only, which decides. The first SIGINT, SIGTERM or SIGUSR1 is passed to torchrun, which passes
it to every rank: they finish the step, save it and exit (a preemption). From then on the
terminal gets none of torchrun's stderr (its SignalException traceback goes to torchrun.log).
Ctrl-C again kills torchrun and every rank at once; LATEST still names the last complete
checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Optional

from rich.console import Console

from launcher.engine import device
from launcher.errors import RecipeError
from launcher.executors.base import Executor, JobState
from launcher.plan.build import Plan
from launcher.run_dir import RunDir

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on a signal with a checkpoint saved; run it again
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGQUIT)
_ROOT_CAUSE_RANK = re.compile(r"rank\s*:\s*(\d+)")
_EXIT_CODE = re.compile(r"exitcode\s*:\s*(-?\d+)")


class LocalExecutor(Executor):
    name = "local"

    def refuse(self, plan: Plan) -> None:
        if plan.nodes != 1:
            raise RecipeError("scale.nodes", f"is {plan.nodes} but the local executor runs on one "
                              "machine", "use --nodes 1 here, or render the plan for a cluster "
                              "with `python -m launcher render`")
        # What the engine would refuse on every rank, said before anything starts.
        device.refuse_here(plan, plan.procs_per_node)

    def submit(self, plan: Plan, plan_dir: Path, console: Console) -> int:
        """Run the plan under torchrun here and wait for it (Ctrl-C stops it, see above)."""
        rd = RunDir(plan.run_dir)
        env = dict(os.environ, PYTHON=sys.executable)
        for key, value in local_env(plan).items():
            env.setdefault(key, value)
        console.print(f"[bold]launching[/] {plan.world_size} process(es); run directory "
                      f"{plan.run_dir}", highlight=False)
        self.clear_outcome(rd)
        # A session of its own: the terminal's signals come to this process only (see above).
        proc = subprocess.Popen(["bash", str(plan_dir / "launch.sh")], env=env,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True)
        tail: deque[str] = deque(maxlen=200)
        relay = _Relay(proc.stderr, tail, rd.logs / "torchrun.log")
        stop = _Stop(proc, relay, console)
        previous = {sig: signal.signal(sig, stop.handle) for sig in _FORWARDED}
        # Recorded only now: a `launcher cancel` (SIGTERM) must find the handler that lets
        # every rank save, not the default that would orphan torchrun.
        _record(rd, started=True)
        try:
            rc = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            _record(rd, started=False)
        relay.join(timeout=5)
        ctrl_c = stop.first == "SIGINT" or stop.aborted
        if rd.preempted.is_file() and not stop.aborted:
            info = json.loads(rd.preempted.read_text())
            if ctrl_c:
                console.print(f"saved step {info['step']}; `launcher resume {rd.root}` goes on",
                              highlight=False, soft_wrap=True)
                return EXIT_INTERRUPTED
            console.print(f"[bold yellow]preempted[/] ({info['signal']}) at step {info['step']}; "
                          f"checkpoint {info['checkpoint']} saved. Continue with: python -m "
                          f"launcher resume {rd.root}", highlight=False, soft_wrap=True)
            return EXIT_PREEMPTED
        if ctrl_c:
            latest = rd.latest()
            kept = (f"the last complete checkpoint is {latest.name}; `launcher resume {rd.root}` "
                    "goes on from it" if latest else "no checkpoint was saved")
            console.show_cursor(True)  # rank 0's progress bar may have died hiding it
            console.print(f"\n[bold yellow]{'aborted' if stop.aborted else 'stopped'}[/]: {kept}",
                          highlight=False, soft_wrap=True)
            return EXIT_INTERRUPTED
        if rc != 0:
            _report_failure(rd, list(tail), rc, plan.world_size)
        return rc

    def state(self, rd: RunDir) -> Optional[JobState]:
        if not rd.local_job.is_file():
            return None
        rec = json.loads(rd.local_job.read_text())
        job = f"pid {rec['pid']}"
        if "ended" in rec:
            return JobState(self.name, job, "ended", running=False, nodes=rec["host"])
        if rec["host"] != socket.gethostname():
            return JobState(self.name, job, "started on another host (cannot be checked "
                            "from here)", running=None, nodes=rec["host"])
        if _alive(rec):
            return JobState(self.name, job, "running", running=True, nodes=rec["host"])
        # Killed too hard to record its end (SIGKILL, a crash, the machine went down).
        return JobState(self.name, job, "gone without ending (killed or crashed)",
                        running=False, nodes=rec["host"])

    def cancel(self, rd: RunDir, console: Console) -> int:
        job = self.state(rd)
        if job is None or job.running is False:
            raise RecipeError("RUN_DIR", f"{rd.root} is not running here"
                              + (f" (its launcher, {job.job}, {job.state})" if job else ""),
                              f"see `launcher status {rd.root}`; `launcher resume {rd.root}` "
                              "goes on from its last checkpoint")
        if job.running is None:
            raise RecipeError("RUN_DIR", f"{rd.root} was started on {job.nodes}, not on this "
                              f"host ({socket.gethostname()})", f"run `launcher cancel {rd.root}` "
                              f"on {job.nodes}")
        pid = json.loads(rd.local_job.read_text())["pid"]
        # The launcher passes it to torchrun, which passes it to every rank (see _Stop).
        os.kill(pid, signal.SIGTERM)
        console.print(f"sent SIGTERM to the launcher ({job.job} on {job.nodes}): every rank saves the step "
                      f"it is on and exits; `launcher resume {rd.root}` goes on",
                      highlight=False, soft_wrap=True)
        return 0


def _record(rd: RunDir, started: bool) -> None:
    """RUN_DIR/local_job.json: this launcher process while it runs, and when it ended."""
    import psutil

    me = psutil.Process()
    rec = {"pid": me.pid, "host": socket.gethostname(), "created": me.create_time()}
    if not started:
        rec["ended"] = time.time()
    tmp = rd.local_job.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec) + "\n")
    tmp.replace(rd.local_job)  # status never reads half a record


def _alive(rec: dict) -> bool:
    """The recorded process still runs (the same process: a reused pid has another start)."""
    import psutil

    try:
        return abs(psutil.Process(rec["pid"]).create_time() - rec["created"]) < 1
    except psutil.NoSuchProcess:
        return False


class _Stop:
    """What this process does with a signal while torchrun runs."""

    def __init__(self, proc: subprocess.Popen, relay: "_Relay", console: Console):
        self.proc, self.relay, self.console = proc, relay, console
        self.first: Optional[str] = None
        self.aborted = False

    def handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self.first is None:
            self.first = name
            self.relay.quiet = True  # torchrun's traceback for the signal goes to its log only
            if signum == signal.SIGINT:
                self.console.print("\n[bold yellow]stopping[/]: every rank saves the step it is "
                                   "on (Ctrl-C again aborts at once)", highlight=False,
                                   soft_wrap=True)
            self.proc.send_signal(signum)  # torchrun passes it to every rank
        elif signum == signal.SIGINT and not self.aborted:
            self.aborted = True
            _kill_tree(self.proc.pid)
        # Any other second signal changes nothing: the ranks are saving already.


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun and everything under it (the ranks are in sessions of their own, so
    no process group holds them all)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


class _Relay(threading.Thread):
    """torchrun's (and the ranks') stderr: kept in `log`, shown on the terminal until quiet."""

    def __init__(self, stream, tail: deque, log: Path):
        super().__init__(daemon=True)
        self.stream, self.tail, self.log = stream, tail, log
        self.quiet = False
        self.start()

    def run(self) -> None:
        with self.log.open("a") as log:
            for line in self.stream:
                self.tail.append(line)
                log.write(line)
                log.flush()
                if not self.quiet:
                    sys.stderr.write(line)
                    sys.stderr.flush()


def threads_per_rank(procs: int) -> str:
    # Share the cores between the ranks (torchrun and accelerate each warn and guess).
    return str(max(1, (os.cpu_count() or 1) // procs))


def local_env(plan: Plan) -> dict[str, str]:
    """Environment the ranks need whichever executor starts them."""
    env = {"OMP_NUM_THREADS": threads_per_rank(plan.procs_per_node)}
    if _all_local(plan):
        # Nothing to fetch: never wait on a hub that may be unreachable from this node.
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def _all_local(plan: Plan) -> bool:
    d, m = plan.recipe.data, plan.recipe.model
    paths = [m.name, m.tokenizer or m.name, d.train] + ([d.eval] if d.eval else [])
    return all(Path(p).exists() for p in paths)


def failed_rank(rd: RunDir, torchrun_stderr: list[str]) -> int | None:
    """The rank that failed first. A rank killed by a signal writes nothing, and the others
    then fail on their collectives: torchrun's root cause names it. Otherwise the first of
    the ranks' own error files, else torchrun's root cause."""
    text = "".join(torchrun_stderr)
    root = text.rfind("Root Cause")
    rank = _ROOT_CAUSE_RANK.search(text, root) if root >= 0 else None
    code = _EXIT_CODE.search(text, root) if root >= 0 else None
    if rank and code and int(code.group(1)) < 0:
        return int(rank.group(1))
    errors = sorted(rd.logs.glob("rank*.error"), key=lambda p: p.stat().st_mtime)
    if errors:
        return int(errors[0].stem.removeprefix("rank"))
    return int(rank.group(1)) if rank else None


def _report_failure(rd: RunDir, stderr_tail: list[str], rc: int, world: int) -> None:
    console = Console(stderr=True)
    rank = failed_rank(rd, stderr_tail)
    if rank is None:
        console.print(f"[bold red]job failed[/] (exit status {rc}); no rank reported an error. "
                      f"Logs: {rd.logs}", highlight=False)
        return
    log = rd.rank_log(rank)
    lines = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
    text = "".join(stderr_tail)
    code = _EXIT_CODE.search(text, max(0, text.rfind("Root Cause")))
    how = f" (exit code {code.group(1)})" if code else ""
    console.print(f"[bold red]rank {rank} of {world} failed{how}[/]; the job was stopped. "
                  f"Last lines of {log}:", highlight=False)
    for line in lines:
        console.print(f"  {line}", highlight=False, markup=False)
