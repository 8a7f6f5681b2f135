"""What every task tells the engine: its columns, how a row is checked, encoded and scored.

The training loop, the checkpoints and the launch path are the same for every task; a task
only turns rows into model inputs, model outputs into a loss and per-example records, and
records (gathered from all ranks, in file order) into metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # torch loads only where tensors are made: planning stays light
    import torch

from launcher.errors import RecipeError
from launcher.recipe.schema import Recipe


@dataclass(frozen=True)
class Columns:
    text: str
    pair: Optional[str]
    label: str
    id: Optional[str]

    def fields(self) -> dict[str, Optional[str]]:
        """Recipe field -> column, for error messages that name what to change."""
        return {"data.text_column": self.text, "data.text_pair_column": self.pair,
                "data.label_column": self.label, "data.id_column": self.id}


def row_error(index: int, row: dict, cols: Columns, field: str, problem: str,
              fix: str) -> RecipeError:
    """A bad row, named by its 0-based position in the file (and its id when there is one)."""
    who = f"example {index}" if index >= 0 else "a training example"
    if cols.id and row.get(cols.id) is not None:
        who += f" (id {row[cols.id]})"
    return RecipeError(field, f"{who}: {problem}", fix)


class Task:
    """Base for the four tasks; subclasses fill in the hooks below."""

    type: str
    main_metric: str
    metric_names: tuple[str, ...]  # what eval.metric may name
    default_text, default_pair, default_label = "text", None, "label"
    auto_model: str  # transformers AutoModelFor... class name

    def __init__(self, recipe: Recipe):
        self.recipe, self.cfg, self.data = recipe, recipe.task, recipe.data
        d = recipe.data
        self.cols = Columns(text=d.text_column or self.default_text,
                            pair=d.text_pair_column or self.default_pair,
                            label=d.label_column or self.default_label, id=d.id_column)
        self.labels: tuple[str, ...] = tuple(recipe.task.labels)

    # -- checks before training ------------------------------------------------------------
    def validate(self) -> None:
        """Recipe-level checks of task.* (no data read)."""
        if len(self.labels) < 2:
            raise RecipeError("task.labels", f"needs at least two label names, got "
                              f"{list(self.labels)}", "list every class, e.g. labels=('World', "
                              "'Sports', 'Business', 'Sci/Tech')")
        if len(set(self.labels)) != len(self.labels):
            raise RecipeError("task.labels", "has a name twice", "give each label once")

    def is_empty(self, row: dict) -> bool:
        value = row.get(self.cols.text)
        if isinstance(value, str):
            return not value.strip()
        return value is None or (isinstance(value, (list, tuple)) and not value)

    def check_row(self, index: int, row: dict) -> list[int]:
        """Raise a RecipeError naming the example and field if the row is unusable; return
        the label ids it holds (counted for class weights and reports)."""
        raise NotImplementedError

    # -- model -------------------------------------------------------------------------------
    def config_kwargs(self) -> dict[str, Any]:
        return {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)),
                "label2id": {name: i for i, name in enumerate(self.labels)}}

    # -- data -> inputs ----------------------------------------------------------------------
    def encode(self, rows: Sequence[dict], tokenizer: Any, *, indices: Sequence[int],
               labeled: bool = True) -> dict[str, Any]:
        """{'inputs': model tensors ('labels' too when labeled), 'ids', 'index' (each row's
        position in its file), 'meta': per-example data that records need}."""
        raise NotImplementedError

    # -- outputs -> loss, records, metrics -----------------------------------------------------
    # A step's loss is loss_sum over all its micro batches and ranks divided by units over
    # the same (launcher/engine/step_loss.py): a unit weighs the same however the step is
    # split. For one micro batch, loss_sum / units is PyTorch's mean-reduced loss.
    def loss_sum(self, outputs: Any, labels: torch.Tensor,
                 weights: Optional[torch.Tensor]) -> torch.Tensor:
        """The summed (class-weighted) loss of the batch's labelled units, a float32 scalar."""
        raise NotImplementedError

    def units(self, labels: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        """What loss_sum is a sum over: the count (or with class weights, the summed weight) of
        the batch's labelled units, a float64 scalar on the labels' device, computed from the
        labels alone (before the forward) and without a host sync."""
        raise NotImplementedError

    def records(self, outputs: Any, batch: dict[str, Any], *, full: bool = False) -> list[dict]:
        """One JSON-able dict per example of the batch, with its 'index' in the eval file;
        `full` keeps every example's text and scores (for `launcher predict`)."""
        raise NotImplementedError

    def metrics(self, records: list[dict]) -> dict[str, Any]:
        raise NotImplementedError

    def errors(self, records: list[dict]) -> list[dict]:
        """Wrong predictions for errors.jsonl, most confident first."""
        raise NotImplementedError

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The two or three numbers worth a line in the log and the summary."""
        raise NotImplementedError

    def table(self, metrics: dict[str, Any]) -> Any:
        """A rich Table of per-class (or per-entity) scores for the end of the run."""
        raise NotImplementedError

    def prediction(self, record: dict) -> dict:
        """What `launcher predict` adds to an input row (from a full record): `predicted`,
        and `score` or `scores` where the task has them."""
        raise NotImplementedError


def scores_table(title: str, first: str, scores: dict[str, dict]) -> Any:
    """Precision / recall / F1 / support per class, label or entity type; callers add totals."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in (first, "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == first else "right")
    for name, m in scores.items():
        table.add_row(name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}",
                      f"{m['support']:,}")
    return table


def text_of(row: dict, column: Optional[str]) -> Optional[str]:
    if column is None:
        return None
    value = row.get(column)
    return "" if value is None else str(value)
