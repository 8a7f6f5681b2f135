"""Evaluation: every example scored once on one rank, counts summed over ranks, then metrics.

Ranks hold different numbers of eval batches, so the forward runs on the unwrapped model
(no collective inside) and the only collective is one all-reduce of the counts at the end.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch


def confusion(model: Any, batches: Iterator[dict], num_labels: int, device: torch.device,
              autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_labels x num_labels counts [gold, predicted], summed loss) on this rank."""
    counts = torch.zeros(num_labels * num_labels, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast():
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
            out = model(**inputs)
            gold = inputs["labels"]
            pred = out.logits.argmax(dim=-1)
            counts += torch.bincount(gold * num_labels + pred, minlength=num_labels ** 2)
            loss_sum += out.loss.double() * gold.numel()
    model.train(was_training)
    return counts.view(num_labels, num_labels), loss_sum


def classification_metrics(matrix: torch.Tensor, loss_sum: float,
                           labels: tuple[str, ...]) -> dict[str, Any]:
    m = matrix.double()
    total = m.sum().item()
    true_pos = m.diag()
    precision = torch.where(m.sum(0) > 0, true_pos / m.sum(0).clamp(min=1), torch.zeros_like(true_pos))
    recall = torch.where(m.sum(1) > 0, true_pos / m.sum(1).clamp(min=1), torch.zeros_like(true_pos))
    f1 = torch.where(precision + recall > 0,
                     2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(true_pos))
    return {
        "examples": int(total),
        "loss": loss_sum / max(total, 1),
        "accuracy": true_pos.sum().item() / max(total, 1),
        "macro_f1": f1.mean().item(),
        "per_class": {name: {"precision": precision[i].item(), "recall": recall[i].item(),
                             "f1": f1[i].item(), "support": int(m[i].sum().item())}
                      for i, name in enumerate(labels)},
        "confusion_matrix": matrix.tolist(),
    }
