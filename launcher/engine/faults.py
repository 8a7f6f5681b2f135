"""Faults on purpose, for the fault tests: `LAUNCHER_FAULT="at=step,step=7,rank=1,do=TERM"`.

`at` is `step` (after optimizer step `step`) or `save` (after this rank wrote its part of
checkpoint `step`, before the ranks agree it is complete); `step=*` is any step. `do` is a
signal name (`TERM`, `USR1`: a real signal to this process, through the real handler), `kill`
(SIGKILL: the rank dies on the spot) or `hang` (the rank stops there until it is killed).
Several faults are separated by `;`. Unset, this module does nothing.
"""

from __future__ import annotations

import os
import signal
import time


def _parse(text: str) -> list[dict[str, str]]:
    faults = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        faults.append(dict(kv.split("=", 1) for kv in part.split(",")))
    return faults


_FAULTS = _parse(os.environ.get("LAUNCHER_FAULT", ""))


def at(where: str, *, step: int, rank: int) -> None:
    for f in _FAULTS:
        if (f["at"] == where and f["step"] in ("*", str(step))
                and int(f.get("rank", rank)) == rank):
            action = f["do"]
            while action == "hang":
                time.sleep(60)
            sig = signal.SIGKILL if action == "kill" else getattr(signal, f"SIG{action}")
            os.kill(os.getpid(), sig)
