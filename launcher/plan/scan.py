"""One pass over a data file before training: every row checked against the task.

A label the head cannot hold (7 with 4 classes, a tag outside the tag set, an answer outside
its context) stops the run here, naming the file, the example and the field, before a job is
queued. Rows with empty text are counted and reported, then skipped by the engine. The label
counts feed `task.class_weights='balanced'`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from launcher import sources
from launcher.errors import RecipeError
from launcher.tasks import Task

SHOWN_EMPTY = 10


@dataclass
class Scan:
    rows: int = 0
    empty: int = 0
    empty_examples: list[int] = field(default_factory=list)  # first few, 0-based
    label_counts: list[int] = field(default_factory=list)
    # tokens of the non-empty rows, estimated from their words (scale.tokens_per_step's
    # steps per epoch): about 1.3 a word plus [CLS]/[SEP], at most data.max_length a row
    tokens_estimate: int = 0

    @property
    def usable(self) -> int:
        return self.rows - self.empty

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe_empty(self, name: str) -> Optional[str]:
        if not self.empty:
            return None
        shown = ", ".join(map(str, self.empty_examples))
        more = ", ..." if self.empty > len(self.empty_examples) else ""
        return (f"{name}: {self.empty} of {self.rows} rows have empty text and are skipped "
                f"(examples {shown}{more})")


def bad_data(field: str, err: sources.BadData) -> RecipeError:
    return RecipeError(field, str(err), err.fix)


def scan(task: Task, src: sources.Source, limit: Optional[int] = None, *,
         field: str = "data.train", labeled: bool = True) -> Scan:
    """Every row read; the first `limit` (all by default) checked against the task.
    `labeled=False` (predict's input) checks only that the rows can be read."""
    result = Scan(label_counts=[0] * max(len(task.labels), 2))
    stream = sources.read_rows(src) if src.is_local else sources.open_stream(src, streaming=True)
    try:
        for index, row in enumerate(stream):
            if labeled and (limit is None or index < limit):
                _check(task, src, row, index, result)
            elif not src.is_local:
                break  # a hub stream is read no further than it is checked
    except sources.BadData as err:
        raise bad_data(field, err) from None
    return result


def _check(task: Task, src: sources.Source, row: dict, index: int, result: Scan) -> None:
    result.rows += 1
    if task.is_empty(row):
        result.empty += 1
        if len(result.empty_examples) < SHOWN_EMPTY:
            result.empty_examples.append(index)
        return
    try:
        ids = task.check_row(index, row)
    except RecipeError as err:
        raise RecipeError(err.field, f"in {src.name}, {err.problem}", err.fix) from None
    for i in ids:
        result.label_counts[i] += 1
    result.tokens_estimate += _tokens_estimate(task, row)


def _tokens_estimate(task: Task, row: dict) -> int:
    words, texts = 0, 0
    for col in (task.cols.text, task.cols.pair):
        value = row.get(col) if col else None
        if value is None:
            continue
        texts += 1
        words += len(value) if isinstance(value, (list, tuple)) else len(str(value).split())
    return min(task.data.max_length, math.ceil(1.3 * words) + texts + 1)


def balanced_weights(task: Task, train: Scan) -> list[float]:
    """sklearn's 'balanced': examples / (labels x count); for multi-label, negatives / positives
    of each label (BCE's pos_weight)."""
    names = task.labels
    missing = [names[i] for i, c in enumerate(train.label_counts[:len(names)]) if c == 0]
    if missing:
        raise RecipeError("task.class_weights", f"is 'balanced' but labels {missing} never occur "
                          "in data.train", "give explicit weights, one per label")
    counts = train.label_counts[:len(names)]
    if task.type == "multi_label_classification":
        return [(train.usable - c) / c for c in counts]
    total = sum(counts)
    return [total / (len(names) * c) for c in counts]
