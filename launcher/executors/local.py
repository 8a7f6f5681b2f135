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
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Optional

from rich.console import Console

from launcher import plan as plan_mod
from launcher import resume
from launcher.engine import device, trackers
from launcher.errors import RecipeError
from launcher.plan.build import Plan
from launcher.run_dir import RunDir

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGQUIT)
_ROOT_CAUSE_RANK = re.compile(r"rank\s*:\s*(\d+)")
_EXIT_CODE = re.compile(r"exitcode\s*:\s*(-?\d+)")


class LocalExecutor:
    def check(self, plan: Plan) -> Optional[int]:
        """Refuse what cannot run here; the step the run will resume from, if any."""
        if plan.nodes != 1:
            raise RecipeError("scale.nodes", f"is {plan.nodes} but the local executor runs on one "
                              "machine", "use --nodes 1 here, or render the plan for a cluster "
                              "with `python -m launcher render`")
        trackers.check(plan)
        # What the engine would refuse on every rank, said before anything starts.
        device.refuse_here(plan, plan.procs_per_node)
        return resume.check(plan)

    def prepare(self, plan: Plan) -> Path:
        rd = RunDir(plan.run_dir)
        rd.logs.mkdir(parents=True, exist_ok=True)
        plan_mod.write(plan, rd.plan)
        return rd.plan

    def run(self, plan: Plan, plan_dir: Path, console: Console) -> int:
        rd = RunDir(plan.run_dir)
        env = dict(os.environ, PYTHON=sys.executable)
        for key, value in local_env(plan).items():
            env.setdefault(key, value)
        console.print(f"[bold]launching[/] {plan.world_size} process(es); run directory "
                      f"{plan.run_dir}", highlight=False)
        # What an earlier attempt left must not be read as this one's outcome.
        rd.preempted.unlink(missing_ok=True)
        for stale in rd.logs.glob("rank*.error"):
            stale.unlink()
        # A session of its own: the terminal's signals come to this process only (see above).
        proc = subprocess.Popen(["bash", str(plan_dir / "launch.sh")], env=env,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True)
        tail: deque[str] = deque(maxlen=200)
        relay = _Relay(proc.stderr, tail, rd.logs / "torchrun.log")
        stop = _Stop(proc, relay, console)
        previous = {sig: signal.signal(sig, stop.handle) for sig in _FORWARDED}
        try:
            rc = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
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
            return resume.EXIT_PREEMPTED
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
