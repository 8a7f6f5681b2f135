"""Multi-label classification metrics: each example carries a *set* of label ids.

The caller has already turned scores into sets with a threshold; the threshold is only echoed
into the report so that a number in a results file says which cut-off produced it.  Averages
follow sklearn on an indicator matrix with ``zero_division=0``: micro pools every
(example, label) decision, macro averages per-label F1 over all declared labels.
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

from launcher.metrics.classification import precision_recall_f1


def _label_set(ids: Collection[int], num_labels: int, index: int, name: str) -> frozenset[int]:
    """The ids as a set, refusing ids that name no label (they would vanish from every count)."""
    out = frozenset(ids)
    for value in out:
        if not 0 <= value < num_labels:
            raise ValueError(f"example {index}: {name} label id {value} is not in "
                             f"range(0, {num_labels})")
    return out


def multilabel_report(gold: Sequence[Collection[int]], pred: Sequence[Collection[int]],
                      labels: Sequence[str], threshold: float) -> dict[str, Any]:
    """Micro P/R/F1, macro F1, subset accuracy and per-label scores.

    An example with no gold labels and no predicted labels is an exact match for subset
    accuracy and adds nothing to the micro counts.  A label with neither gold nor predicted
    examples gets F1 0.0 and still counts in ``macro_f1``, as in sklearn's indicator-matrix
    macro average.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} examples but pred has {len(pred)}")
    if not labels:
        raise ValueError("labels is empty: need at least one label name")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels has duplicate names: {list(labels)}")
    n = len(labels)
    true_pos, predicted, actual = [0] * n, [0] * n, [0] * n
    exact = 0
    for index, (g_ids, p_ids) in enumerate(zip(gold, pred)):
        g = _label_set(g_ids, n, index, "gold")
        p = _label_set(p_ids, n, index, "pred")
        exact += g == p
        for label in g:
            actual[label] += 1
        for label in p:
            predicted[label] += 1
        for label in g & p:
            true_pos[label] += 1
    micro_p, micro_r, micro_f1 = precision_recall_f1(sum(true_pos), sum(predicted), sum(actual))
    per_label: dict[str, dict[str, float | int]] = {}
    for i, name in enumerate(labels):
        precision, recall, f1 = precision_recall_f1(true_pos[i], predicted[i], actual[i])
        per_label[name] = {"precision": precision, "recall": recall, "f1": f1,
                           "support": actual[i]}
    examples = len(gold)
    return {
        "examples": examples,
        "threshold": threshold,
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": micro_f1,
        "macro_f1": sum(row["f1"] for row in per_label.values()) / n,
        "subset_accuracy": exact / examples if examples else 0.0,
        "per_label": per_label,
    }
