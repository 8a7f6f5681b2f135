"""What a run shows and leaves for a person, all from rank 0: on the terminal a live progress
bar while training and a summary table at the end; in RUN_DIR/eval/<name>/ each evaluation's
metrics.json, errors.jsonl and confusion_matrix.png (from the records of every rank).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from launcher.tasks import Task


class LiveProgress:
    def __init__(self, console: Console, total_steps: int, start_step: int = 0):
        self.console = console
        self._bar = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} samples/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, refresh_per_second=4)
        self._task = self._bar.add_task("train", total=total_steps, completed=start_step,
                                        loss="-", speed="-")

    def __enter__(self) -> "LiveProgress":
        self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.stop()

    def advance(self, step: int) -> None:
        self._bar.update(self._task, completed=step)

    def show(self, *, loss: float, samples_per_s: float) -> None:
        self._bar.update(self._task, loss=f"{loss:.4f}", speed=f"{samples_per_s:,.1f}")

    def note(self, text: str) -> None:
        self._bar.console.print(text, highlight=False)


_NAMES = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "f1": "F1", "exact": "exact match"}


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="Run summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    ev = summary.get("eval") or {}
    for key, value in ev.items():
        if key not in ("examples", "loss"):
            table.add_row(f"eval {_NAMES.get(key, key)}", f"{value:.4f}")
    if ev:
        table.add_row("eval examples", f"{ev['examples']:,}")
    if summary.get("best"):
        b = summary["best"]
        table.add_row("best checkpoint", f"step {b['step']:,} ({b['metric']} {b['value']:.4f})")
    table.add_row("final train loss", f"{summary['final_loss']:.4f}")
    table.add_row("steps", f"{summary['steps']:,} ({summary['world_size']} rank(s))")
    if summary.get("resumed_from") is not None:
        table.add_row("resumed", f"from step {summary['resumed_from']:,}")
    table.add_row("wall time", f"{summary['wall_time_s']:.1f} s")
    table.add_row("samples/s", f"{summary['samples_per_s']:,.1f}")
    table.add_row("run directory", summary["run_dir"])
    return table


def write_eval(out: Path, task: Task, metrics: dict[str, Any], records: list[dict],
          errors_kept: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    errors = task.errors(records)[:errors_kept]
    (out / "errors.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n"
                                              for e in errors))
    if "confusion_matrix" in metrics:
        confusion_png(out / "confusion_matrix.png", metrics["confusion_matrix"], task.labels)


def confusion_png(path: Path, matrix: list[list[int]], labels: tuple[str, ...]) -> None:
    # A Figure of its own, not pyplot: no display and no global backend on a cluster node, and
    # pyplot's import would cost rank 0 ~0.2 s of CPU at its first evaluation.
    from matplotlib.figure import Figure

    n = len(labels)
    size = max(4.0, 0.6 * n + 2)
    fig = Figure(figsize=(size, size * 0.85), dpi=120)
    ax = fig.subplots()
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
