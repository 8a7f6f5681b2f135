"""Preemption: SIGTERM, SIGUSR1 or SIGINT on any rank stops every rank at the same step.

Slurm signals before a time limit or a preemption (`--signal=USR1@grace`), a user or a
scheduler sends SIGTERM, Ctrl-C sends SIGINT, and torchrun forwards what it gets -- but one
rank may be told while the others are not (Lightning#20806). The handler only sets a flag.
Once per step every rank puts its flag into an all-reduce (MAX) on a gloo group of its own,
started without waiting and read one step later, so the step never waits on it; all ranks
read the same result at the same step and stop there together. A second SIGTERM or SIGUSR1
while saving changes nothing; a second SIGINT (Ctrl-C twice) aborts this rank at once, and
the last complete checkpoint stays in charge.
"""

from __future__ import annotations

import signal
from typing import Optional

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preemption:
    def __init__(self, world: int):
        self.world = world
        self.received: Optional[str] = None  # the first signal this rank got
        self.signal: Optional[str] = None  # the one every rank agreed on
        # CPU tensors on gloo: agreeing never touches the GPU stream (a collective, all ranks).
        # Other host-side agreements (the bench's counts) use the same group.
        self.group = dist.new_group(backend="gloo") if world > 1 else None
        self._pending: Optional[tuple] = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # asked twice: stop now, not after the save
        self.received = self.received or signal.Signals(signum).name

    def agreed(self) -> bool:
        """Call once per step on every rank: True on every rank at the same step, one step
        after the first rank saw a signal."""
        if self.world == 1:
            self.signal = self.received
            return self.signal is not None
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            self._pending = None
            if flag.item():
                self.signal = signal.Signals(int(flag.item())).name
                return True
        seen = getattr(signal, self.received) if self.received else 0
        flag = torch.tensor([int(seen)], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        self._pending = (work, flag)
        return False

    def close(self) -> None:
        if self._pending is not None:
            self._pending[0].wait()  # every rank has the same one outstanding
            self._pending = None
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
