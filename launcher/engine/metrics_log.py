"""Where training numbers go: RUN_DIR/metrics.jsonl (one object per log step) and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, jsonl: Path, tensorboard_dir: Path, after_step: int = 0):
        """A resumed run appends after `after_step` (the trainer has already cut what the
        interrupted run logged past its checkpoint from the JSONL file)."""
        from torch.utils.tensorboard import SummaryWriter

        self._file = jsonl.open("a")
        # purge_step: TensorBoard hides the earlier event files' points from that step on.
        self._tb = SummaryWriter(str(tensorboard_dir),
                                 purge_step=after_step + 1 if after_step else None)

    def train(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self._scalars("train", record)

    def eval(self, record: dict[str, Any]) -> None:
        """Eval numbers go to TensorBoard; their full record is RUN_DIR/eval/step-N/."""
        self._scalars("eval", record)

    def _scalars(self, prefix: str, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        self._file.close()
        self._tb.close()
