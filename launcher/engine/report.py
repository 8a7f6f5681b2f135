"""What rank 0 shows a person: a live progress bar while training, a summary table at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table


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
