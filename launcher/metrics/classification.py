"""Single-label classification metrics over a whole gathered eval set, in pure Python.

Rank 0 calls this after every rank's per-example predictions are gathered and sorted, so it
sees the whole dataset at once and can report exact numbers, not averages of per-rank ones.
Conventions follow scikit-learn with ``labels=range(len(labels))`` and ``zero_division=0``,
so the numbers here can be checked against ``sklearn.metrics`` without surprises.
"""

from __future__ import annotations

from typing import Any, Sequence


def precision_recall_f1(true_pos: int, predicted: int, actual: int) -> tuple[float, float, float]:
    """(precision, recall, F1) from counts, with every 0/0 taken as 0.0.

    This is sklearn's ``zero_division=0``: a class nobody predicted has precision 0, not NaN,
    so one absent class cannot turn a macro average into NaN.  The NER and multi-label
    reports use it too, so the rule lives in one place.
    """
    precision = true_pos / predicted if predicted else 0.0
    recall = true_pos / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def confusion_matrix(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> list[list[int]]:
    """Counts with rows = gold label, columns = predicted label.

    Ids outside ``range(num_labels)`` raise instead of being dropped: a silently skipped
    example would make every number in the report wrong without any sign of it.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} examples but pred has {len(pred)}")
    matrix = [[0] * num_labels for _ in range(num_labels)]
    for index, (g, p) in enumerate(zip(gold, pred)):
        for name, value in (("gold", g), ("pred", p)):
            if not 0 <= value < num_labels:
                raise ValueError(f"example {index}: {name} label id {value} is not in "
                                 f"range(0, {num_labels})")
        matrix[g][p] += 1
    return matrix


def _weighted(values: Sequence[float], weights: Sequence[int]) -> float:
    """Support-weighted mean; 0.0 when there is no support at all (an empty eval set)."""
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights)) / total if total else 0.0


def classification_report(gold: Sequence[int], pred: Sequence[int],
                          labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro and support-weighted P/R/F1, per-class scores and the confusion matrix.

    ``labels[i]`` names label id ``i``.  Macro averages run over *all* declared labels, also
    those absent from both gold and pred (they count as 0.0): the average then equals the
    mean of the ``per_class`` rows shown beside it, and does not shift when a rare class
    happens to be missing from one eval set.  Weighted averages use gold support as weights,
    like sklearn's ``average='weighted'``.
    """
    if not labels:
        raise ValueError("labels is empty: need at least one class name")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels has duplicate names: {list(labels)}")
    matrix = confusion_matrix(gold, pred, len(labels))
    n = len(labels)
    support = [sum(matrix[i]) for i in range(n)]
    predicted = [sum(matrix[r][i] for r in range(n)) for i in range(n)]
    scores = [precision_recall_f1(matrix[i][i], predicted[i], support[i]) for i in range(n)]
    precisions, recalls, f1s = (list(column) for column in zip(*scores))
    examples = len(gold)
    correct = sum(matrix[i][i] for i in range(n))
    return {
        "examples": examples,
        "accuracy": correct / examples if examples else 0.0,
        "macro_precision": sum(precisions) / n,
        "macro_recall": sum(recalls) / n,
        "macro_f1": sum(f1s) / n,
        "weighted_precision": _weighted(precisions, support),
        "weighted_recall": _weighted(recalls, support),
        "weighted_f1": _weighted(f1s, support),
        "per_class": {name: {"precision": precisions[i], "recall": recalls[i], "f1": f1s[i],
                             "support": support[i]}
                      for i, name in enumerate(labels)},
        "confusion_matrix": matrix,
    }
