"""What a checkpoint holds besides tensors: one dataclass, saved and loaded field by field.

`Trainer` keeps the loop's state here (step, data position, best eval, evaluations since it);
a checkpoint adds the state of the scheduler and grad scaler, the log window it was cut in,
the tracker runs it goes on in, and what it was written under (model fingerprint, data order,
world size, global batch: launcher/checkpoint/compat.py checks them before a resume).
`state_dict()` and `from_state_dict()` walk the dataclass's fields, so a field added here is
saved and loaded without touching either; a key an older launcher did not write loads as the
field's default. The file is trainer_state.json, read without torch by compat.py and the
commands: its keys are the field names, plus `epoch` (the position's, for readers of old).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from launcher.engine.data import Position


@dataclass
class Best:
    """The best evaluation so far: early stopping counts from it, keep_best exports it."""

    step: int
    metric: str
    value: float


@dataclass
class TrainState:
    # The loop's own state.
    step: int = 0
    position: Position = field(default_factory=Position)
    best: Optional[Best] = None
    evals_since_best: int = 0
    # Filled in when a checkpoint is written.
    scheduler: dict[str, Any] = field(default_factory=dict)
    scaler: Optional[dict[str, Any]] = None
    log_window: Optional[dict[str, float]] = None  # the loss of the window it was cut in
    trackers: Optional[dict[str, str]] = None      # MLflow / W&B run ids a resume goes on in
    # What it was written under; None: an older launcher did not record it.
    data_order: Optional[dict[str, Any]] = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    world_size: Optional[int] = None
    global_batch: Optional[int] = None
    reason: str = "step"
    saved_at: float = 0.0

    @property
    def epoch(self) -> int:
        return self.position.epoch

    def state_dict(self) -> dict[str, Any]:
        """As trainer_state.json holds it (plain JSON values)."""
        saved: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "position":
                value = value.to_dict()
            elif f.name == "best":
                if value is None:
                    continue  # absent until the first evaluation, as it has always been
                value = dataclasses.asdict(value)
            saved[f.name] = value
        return saved

    @classmethod
    def from_state_dict(cls, saved: dict[str, Any]) -> "TrainState":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in saved.items() if k in known}
        values["position"] = Position(**saved.get("position", {}))
        if saved.get("best"):
            best = saved["best"]
            values["best"] = Best(step=best["step"], metric=best.get("metric", ""),
                                  value=best["value"])
        if values.get("scheduler") is None:
            values.pop("scheduler", None)
        return cls(**values)
