"""What runs on each node of a Slurm allocation: the plan's launch.sh (torchrun), one per node.

submitit pickles a `NodeJob` and runs it as one task per node. The first node of the
allocation hosts torchrun's c10d rendezvous (its address from Slurm's node table, a port from
the job id), so the same launch.sh serves a laptop and a cluster. On SIGUSR1 (Slurm's warning
before the time limit, or `scancel --signal=USR1`), submitit calls `checkpoint` on the first
task: the ranks are told, save the same step and exit; then submitit requeues the job, and the
rerun's engine resumes from LATEST under the same run directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import submitit

from launcher.run_dir import RunDir


def _first_node_address() -> str:
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, check=True).stdout.split()
    # NodeAddr is what Slurm itself uses to reach the node (the name may not resolve).
    shown = subprocess.run(["scontrol", "show", "node", nodes[0], "-o"], capture_output=True,
                           text=True).stdout
    for field in shown.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return nodes[0]


class NodeJob(submitit.helpers.Checkpointable):
    def __init__(self, plan_dir: str, env: dict[str, str], grace_s: int):
        self.plan_dir, self.env, self.grace_s = plan_dir, env, grace_s
        self._proc: Optional[subprocess.Popen] = None

    def __call__(self) -> dict[str, Any]:
        job = os.environ["SLURM_JOB_ID"]
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        env = dict(os.environ, **self.env, PYTHON=sys.executable,
                   MASTER_ADDR=_first_node_address(), MASTER_PORT=str(20000 + int(job) % 20000),
                   RDZV_ID=f"{job}-{restarts}")
        plan = json.loads((Path(self.plan_dir) / "plan.json").read_text())
        rd = RunDir(plan["run_dir"])
        self._proc = subprocess.Popen(["bash", str(Path(self.plan_dir) / "launch.sh")], env=env)
        # Poll rather than wait(): wait() holds the Popen's lock while it blocks, and
        # `checkpoint` (run in a signal handler on this thread) must be able to wait too.
        while (rc := self._proc.poll()) is None:
            time.sleep(0.5)
        if rd.preempted.is_file():
            return {"preempted": json.loads(rd.preempted.read_text())}
        if rc != 0:
            error = rd.first_error()
            raise RuntimeError(f"torchrun on {os.environ.get('SLURMD_NODENAME')} exited with "
                               f"{rc}" + (f": rank {error[0]}: {error[1]}" if error else "")
                               + f"; see {rd.logs}")
        return json.loads(rd.summary.read_text()) if rd.summary.is_file() else {}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """On the first task, on SIGUSR1: let every rank save, then be requeued."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)  # torchrun passes it to its ranks
            try:
                self._proc.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                pass  # the time limit will end it; LATEST still names a complete checkpoint
        return submitit.helpers.DelayedSubmission(NodeJob(self.plan_dir, self.env, self.grace_s))
