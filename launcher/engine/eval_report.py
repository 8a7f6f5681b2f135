"""What an evaluation leaves for a person: metrics.json, errors.jsonl, confusion_matrix.png.

Written by rank 0 into RUN_DIR/eval/<name>/ from the records of every rank.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launcher.tasks import Task


def write(out: Path, task: Task, metrics: dict[str, Any], records: list[dict],
          errors_kept: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    errors = task.errors(records)[:errors_kept]
    (out / "errors.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n"
                                              for e in errors))
    if "confusion_matrix" in metrics:
        confusion_png(out / "confusion_matrix.png", metrics["confusion_matrix"], task.labels)


def confusion_png(path: Path, matrix: list[list[int]], labels: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    import matplotlib.pyplot as plt

    n = len(labels)
    size = max(4.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=120)
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"Confusion matrix ({sum(map(sum, matrix)):,} examples)")
    peak = max((v for row in matrix for v in row), default=0)
    if n <= 20:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:,}", ha="center", va="center", fontsize=8,
                        color="white" if v > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
