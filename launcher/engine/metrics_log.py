"""Where training numbers go: RUN_DIR/metrics.jsonl (one object per log step) and the
recipe's trackers (`run.report_to`: TensorBoard, MLflow, W&B; see trackers.py). Rank 0 only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from launcher.engine import trackers as trackers_mod


class MetricsLog:
    def __init__(self, plan: Any, rd: Any, after_step: int = 0,
                 run_ids: Optional[dict[str, str]] = None,
                 warn: Callable[[str], None] = print):
        """A resumed run appends after `after_step` (the trainer has already cut what the
        interrupted run logged past its checkpoint from the JSONL file) and goes on in the
        tracker runs `run_ids` names (from the checkpoint)."""
        self._file = rd.metrics.open("a")
        self.trackers = trackers_mod.Trackers(
            trackers_mod.build(plan.recipe.run.report_to, rd, plan.name), warn)
        self.trackers.start(run_ids or {}, after_step=after_step)
        self.trackers.log_params(trackers_mod.recipe_params(plan),
                                 resumed_from=after_step or None)
        self.step = after_step

    def train(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.step = record["step"]
        self.trackers.log_metrics(trackers_mod.flatten(
            {k: v for k, v in record.items() if k != "step"}, "train/"), record["step"])

    def eval(self, step: int, metrics: dict[str, Any], out_dir: Path) -> None:
        """The task's numbers go to the trackers (the full record is RUN_DIR/eval/step-N/),
        with the confusion matrix picture and metrics.json as artifacts."""
        self.trackers.log_metrics(trackers_mod.flatten(
            {k: v for k, v in metrics.items() if k != "step"}, "eval/"), step)
        for name in ("confusion_matrix.png", "metrics.json"):
            self.trackers.log_artifact(out_dir / name, f"eval/{out_dir.name}")

    def artifact(self, path: Path) -> None:
        self.trackers.log_artifact(path)

    def run_ids(self) -> dict[str, str]:
        """What a checkpoint keeps so that a resume continues the same tracker runs."""
        return dict(self.trackers.ids)

    def close(self, status: str = "finished") -> None:
        self._file.close()
        self.trackers.finish(status, self.step)
