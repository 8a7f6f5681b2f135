"""What the training loop calls besides training, at fixed points of `Trainer.train()`.

engine/main.py hands the trainer the hooks its plan asks for: the step timer of `launcher bench`
(plan.bench, engine/step_timer.py) and the faults of the fault tests (plan.faults,
engine/faults.py). Every call does nothing here, so a plain run's loop has no branches for them.
"""

from __future__ import annotations

from typing import Any


class StepHooks:
    def setup(self, model: Any, device: Any) -> None:
        """Once, before the loop: the whole model (not yet wrapped or sharded) and its device."""

    def data_begin(self) -> None:
        """Before the loop asks for a micro batch."""

    def data_end(self, inputs: dict[str, Any]) -> None:
        """With the micro batch it got (on the host)."""

    def step_end(self, step: int) -> None:
        """After optimizer step `step`."""

    def after_save(self, step: int) -> None:
        """After this rank wrote its part of checkpoint `step`, before the ranks agree it is
        complete."""

    def finish(self, group: Any) -> None:
        """Once, after the last step (collective: every rank calls it; `group` is the gloo
        group of engine/preempt.py, None for one process)."""


class Chain(StepHooks):
    """Several hooks, called in order."""

    def __init__(self, hooks: list[StepHooks]):
        self.hooks = hooks

    def setup(self, model: Any, device: Any) -> None:
        for h in self.hooks:
            h.setup(model, device)

    def data_begin(self) -> None:
        for h in self.hooks:
            h.data_begin()

    def data_end(self, inputs: dict[str, Any]) -> None:
        for h in self.hooks:
            h.data_end(inputs)

    def step_end(self, step: int) -> None:
        for h in self.hooks:
            h.step_end(step)

    def after_save(self, step: int) -> None:
        for h in self.hooks:
            h.after_save(step)

    def finish(self, group: Any) -> None:
        for h in self.hooks:
            h.finish(group)
