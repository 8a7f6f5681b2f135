"""Ctrl-C in a real terminal: the first one saves the step every rank is on, the second aborts.

`launcher run` is started as the session leader of a pseudo-terminal, so the terminal's
interrupt character (what Ctrl-C types) goes to its foreground process group, as in a shell.
One run, ZeRO-2 on 2 ranks: Ctrl-C once (saved, exit 130), then `launcher resume` with rank 1
stuck in its next save and Ctrl-C twice (aborted at once, the saved checkpoint still in
charge), then `launcher resume` to the end. Ctrl-C comes right after a logged step, so 16
steps leave room for both stops; the last launch trains only what is left of them.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

import psutil

from conftest import REPO, TINY, cli_env
from manifest_check import assert_manifest_is_what_each_rank_wrote
from launcher.checkpoint import store
from launcher.run_dir import RunDir

STEPS = 16
ARGS = ["--nproc-per-node", "2", "scale.strategy=zero2", "scale.micro_batch=16",
        "scale.global_batch=32", f"run.max_steps={STEPS}", "run.epochs=None", "run.log_every=1",
        "eval.every=0", "eval.max_examples=48", "checkpoint.every=0", "checkpoint.grace_s=600",
        "scale.timeout_s=900"]


class Terminal:
    """`python -m launcher ARGS` on a pseudo-terminal of its own; everything it shows."""

    def __init__(self, args: list[str], env: dict[str, str]):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 300, 0, 0))
        self.master, self.shown = master, b""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launcher", *map(str, args)], cwd=REPO, env=env,
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))  # its controlling tty
        os.close(slave)

    def read(self, wait: float = 0.05) -> None:
        if select.select([self.master], [], [], wait)[0]:
            try:
                self.shown += os.read(self.master, 1 << 16)
            except OSError:  # the other side is closed
                time.sleep(wait)

    def wait_for(self, done, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert self.proc.poll() is None, f"exited before {what}:\n{self.text[-3000:]}"
            assert time.monotonic() < deadline, f"no {what}:\n{self.text[-3000:]}"
            self.read()

    def ctrl_c(self) -> None:
        os.write(self.master, termios.tcgetattr(self.master)[6][termios.VINTR])

    def finish(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, self.text[-3000:]
            self.read()
        self.read(0.2)
        os.close(self.master)
        return self.proc.returncode

    @property
    def text(self) -> str:
        """What it showed, without the terminal's colour and cursor codes."""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.shown.decode(errors="replace"))


def _steps_logged(rd: RunDir) -> int:
    return len(rd.metrics.read_text().splitlines()) if rd.metrics.is_file() else 0


def _engines_of(rd: RunDir) -> list[psutil.Process]:
    plan = str(rd.plan / "plan.json")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if plan in (p.info["cmdline"] or []):
            found.append(p)
    return found


def test_ctrl_c_saves_and_twice_aborts(tmp_path):
    out = tmp_path / "run"
    rd = RunDir(out)
    env = {k: v for k, v in cli_env().items() if k != "COLUMNS"}

    # 1. Ctrl-C once, mid-training: every rank saves the step it is on.
    term = Terminal(["run", TINY, *ARGS, f"run.output_dir={out}"], env)
    term.wait_for(lambda: _steps_logged(rd) >= 1, "a trained step")
    term.ctrl_c()
    assert term.finish() == 130, term.text[-3000:]
    info = json.loads(rd.preempted.read_text())
    saved = info["step"]
    assert info["signal"] == "SIGINT" and 1 <= saved < STEPS
    assert rd.latest() == rd.checkpoint(saved)
    said = " ".join(term.text.split())
    assert f"saved step {saved}; `launcher resume {out}` goes on" in said
    assert "Traceback" not in term.text and "SignalException" not in term.text
    assert "SignalException" in (rd.logs / "torchrun.log").read_text()  # kept, not shown
    assert_manifest_is_what_each_rank_wrote(rd.latest(), world=2, strategy="zero2")
    assert all("timeout 900 s" in rd.rank_log(r).read_text() for r in range(2))  # timeout_s

    # 2. Resume, Ctrl-C, and Ctrl-C again while rank 1 is stuck in the save: aborted at once.
    term = Terminal(["resume", out], {**env, "LAUNCHER_FAULT": "at=save,step=*,rank=1,do=hang"})
    term.wait_for(lambda: _steps_logged(rd) > saved, "a step after the resume")
    term.ctrl_c()
    term.wait_for(lambda: b"Ctrl-C again" in term.shown, "the first Ctrl-C's answer")
    term.ctrl_c()
    assert term.finish() == 130, term.text[-3000:]
    said = " ".join(term.text.split())
    assert f"aborted: the last complete checkpoint is {rd.checkpoint(saved).name}" in said
    assert "Traceback" not in term.text
    assert not _engines_of(rd), "ranks left running after the abort"
    assert rd.latest() == rd.checkpoint(saved) and store.problem(rd.latest()) is None
    assert not rd.preempted.exists()

    # 3. Resume to the end.
    proc = subprocess.run([sys.executable, "-m", "launcher", "resume", str(out)], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"from step {saved}" in proc.stdout
    summary = json.loads(rd.summary.read_text())
    assert summary["steps"] == STEPS and summary["resumed_from"] == saved
