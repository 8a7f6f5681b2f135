"""Faults on purpose, for the fault tests: `LAUNCHER_FAULT="at=step,step=7,rank=1,do=TERM"`.

`at` is `step` (after optimizer step `step`) or `save` (after this rank wrote its part of
checkpoint `step`, before the ranks agree it is complete); `step=*` is any step. `do` is a
signal name (`TERM`, `USR1`: a real signal to this process, through the real handler), `kill`
(SIGKILL: the rank dies on the spot) or `hang` (the rank stops there until it is killed).
Several faults are separated by `;`.

The executor that prepares a run reads LAUNCHER_FAULT from the shell that launches it and
writes the parsed faults into the plan (plan.faults); engine/main.py hands them to the trainer
as step hooks. Without them nothing here runs.
"""

from __future__ import annotations

import os
import signal
import time

from launcher.engine.hooks import StepHooks

ENV = "LAUNCHER_FAULT"


def parse(text: str) -> list[dict[str, str]]:
    faults = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        faults.append(dict(kv.split("=", 1) for kv in part.split(",")))
    return faults


class Faults(StepHooks):
    def __init__(self, faults: list[dict[str, str]], rank: int):
        self.faults, self.rank = faults, rank

    def step_end(self, step: int) -> None:
        self._at("step", step)

    def after_save(self, step: int) -> None:
        self._at("save", step)

    def _at(self, where: str, step: int) -> None:
        for f in self.faults:
            if (f["at"] == where and f["step"] in ("*", str(step))
                    and int(f.get("rank", self.rank)) == self.rank):
                action = f["do"]
                while action == "hang":
                    time.sleep(60)
                sig = signal.SIGKILL if action == "kill" else getattr(signal, f"SIG{action}")
                os.kill(os.getpid(), sig)
