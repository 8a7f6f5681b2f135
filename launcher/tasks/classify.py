"""Single-label sequence classification: one text (IMDB, SST-2, AG News) or a pair (MNLI)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # torch loads only where tensors are made: planning stays light
    import torch

from rich.table import Table

from launcher.metrics import classification_report
from launcher.tasks.base import Task, row_error, scores_table, text_of


class SequenceClassification(Task):
    type = "sequence_classification"
    main_metric = "macro_f1"
    metric_names = ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall",
                    "loss")
    auto_model = "AutoModelForSequenceClassification"

    def label_id(self, index: int, row: dict, value: Any) -> int:
        names, field = self.labels, "data.label_column"
        if isinstance(value, str):
            if value in names:
                return names.index(value)
            raise row_error(index, row, self.cols, field,
                            f"label '{value}' in column '{self.cols.label}' is not in task.labels "
                            f"{list(names)}", "add it to task.labels or fix the row")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(names):
            raise row_error(index, row, self.cols, field,
                            f"label {value!r} in column '{self.cols.label}' is not an id below "
                            f"{len(names)} (task.labels has {len(names)} names)",
                            "list every class in task.labels, in id order")
        return value

    def check_row(self, index: int, row: dict) -> list[int]:
        return [self.label_id(index, row, row.get(self.cols.label))]

    def _tokenize(self, tokenizer: Any, rows: Sequence[dict]) -> tuple[dict, list[str], Optional[list[str]]]:
        d = self.data
        texts = [text_of(r, self.cols.text) for r in rows]
        pairs = [text_of(r, self.cols.pair) for r in rows] if self.cols.pair else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=d.max_length, padding=True,
                        pad_to_multiple_of=d.pad_to_multiple_of, return_tensors="pt")
        return dict(enc), texts, pairs

    def _ids(self, rows: Sequence[dict], texts: list[str]) -> list[str]:
        return [str(r[self.cols.id]) if self.cols.id and r.get(self.cols.id) is not None
                else t[:80] for r, t in zip(rows, texts)]

    def encode(self, rows: Sequence[dict], tokenizer: Any, *, indices: Sequence[int],
               labeled: bool = True) -> dict[str, Any]:
        import torch
        inputs, texts, pairs = self._tokenize(tokenizer, rows)
        if labeled:
            inputs["labels"] = torch.tensor([self.label_id(i, r, r.get(self.cols.label))
                                             for i, r in zip(indices, rows)])
        return {"inputs": inputs, "ids": self._ids(rows, texts), "index": list(indices),
                "meta": {"texts": texts, "pairs": pairs}}

    def loss_sum(self, outputs: Any, labels: torch.Tensor,
                 weights: Optional[torch.Tensor]) -> torch.Tensor:
        import torch.nn.functional as F
        return F.cross_entropy(outputs.logits.float(), labels, weight=weights,
                               label_smoothing=self.cfg.label_smoothing, reduction="sum")

    def units(self, labels: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        import torch
        # Examples; with class weights, the summed weight of their classes (what PyTorch's
        # weighted mean divides by, label smoothing included).
        if weights is None:
            return labels.new_full((), labels.shape[0], dtype=torch.float64)
        return weights.double()[labels].sum()

    def records(self, outputs: Any, batch: dict[str, Any], *, full: bool = False) -> list[dict]:
        import torch.nn.functional as F
        logits = outputs.logits.float()
        probs = logits.softmax(-1)
        conf, pred = probs.max(-1)
        labels = batch["inputs"].get("labels")
        if labels is None:  # `launcher predict`: no gold
            gold, losses = [None] * len(pred), [None] * len(pred)
        else:
            labels = labels.to(logits.device)
            gold = labels.tolist()
            losses = F.cross_entropy(logits, labels, reduction="none").tolist()
        meta, out = batch["meta"], []
        for j, (g, p, c) in enumerate(zip(gold, pred.tolist(), conf.tolist())):
            rec = {"index": batch["index"][j], "id": batch["ids"][j], "gold": g, "pred": p,
                   "confidence": c, "loss": losses[j]}
            if full or g != p:  # text travels only where someone will read it
                rec["text"] = meta["texts"][j]
                if meta["pairs"] is not None:
                    rec["pair"] = meta["pairs"][j]
            if full:
                top = probs[j].topk(min(3, probs.shape[-1]))
                rec["top"] = [[self.labels[k], v] for v, k in zip(top.values.tolist(),
                                                                  top.indices.tolist())]
            out.append(rec)
        return out

    def metrics(self, records: list[dict]) -> dict[str, Any]:
        report = classification_report([r["gold"] for r in records], [r["pred"] for r in records],
                                       self.labels)
        return {"loss": math.fsum(r["loss"] for r in records) / max(len(records), 1), **report}

    def errors(self, records: list[dict]) -> list[dict]:
        wrong = [r for r in records if r["gold"] != r["pred"]]
        wrong.sort(key=lambda r: (-r["confidence"], r["index"]))
        out = []
        for r in wrong:
            row = {"index": r["index"], "id": r["id"], "text": r["text"]}
            if "pair" in r:
                row[self.cols.pair] = r["pair"]
            row.update(gold=self.labels[r["gold"]], predicted=self.labels[r["pred"]],
                       confidence=round(r["confidence"], 6))
            out.append(row)
        return out

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}

    def table(self, metrics: dict[str, Any]) -> Table:
        table = scores_table("Per class (eval)", "label", metrics["per_class"])
        table.add_row("macro", f"{metrics['macro_precision']:.4f}", f"{metrics['macro_recall']:.4f}",
                      f"{metrics['macro_f1']:.4f}", f"{metrics['examples']:,}", style="bold")
        table.add_row("weighted", f"{metrics['weighted_precision']:.4f}",
                      f"{metrics['weighted_recall']:.4f}", f"{metrics['weighted_f1']:.4f}", "")
        return table

    def prediction(self, record: dict) -> dict:
        return {"predicted": self.labels[record["pred"]], "score": round(record["confidence"], 6),
                "top": [[name, round(p, 6)] for name, p in record["top"]]}
