"""Where training numbers go: RUN_DIR/metrics.jsonl (one object per log step) and TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, jsonl: Path, tensorboard_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._file = jsonl.open("a")
        self._tb = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict[str, Any], prefix: str = "train") -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        self._tb.close()
