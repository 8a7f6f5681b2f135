"""Multi-label classification (news tagging): any subset of the labels, BCE-with-logits."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # torch loads only where tensors are made: planning stays light
    import torch

from rich.table import Table

from launcher.metrics import multilabel_report
from launcher.tasks.base import row_error, scores_table
from launcher.tasks.classify import SequenceClassification


class MultiLabelClassification(SequenceClassification):
    type = "multi_label_classification"
    main_metric = "micro_f1"
    metric_names = ("micro_f1", "macro_f1", "subset_accuracy", "micro_precision",
                    "micro_recall", "loss")
    default_label = "labels"

    def config_kwargs(self) -> dict[str, Any]:
        return {**super().config_kwargs(), "problem_type": "multi_label_classification"}

    def label_ids(self, index: int, row: dict) -> list[int]:
        value = row.get(self.cols.label)
        if value is None:
            value = []
        if not isinstance(value, (list, tuple)):
            raise row_error(index, row, self.cols, "data.label_column",
                            f"column '{self.cols.label}' holds {value!r}, not a list of labels",
                            "give each row a list of label names or ids ([] for none)")
        ids = [self.label_id(index, row, v) for v in value]
        return sorted(set(ids))

    def check_row(self, index: int, row: dict) -> list[int]:
        return self.label_ids(index, row)

    def encode(self, rows: Sequence[dict], tokenizer: Any, *, indices: Sequence[int],
               labeled: bool = True) -> dict[str, Any]:
        import torch
        inputs, texts, pairs = self._tokenize(tokenizer, rows)
        if labeled:
            hot = torch.zeros(len(rows), len(self.labels))
            for j, (i, r) in enumerate(zip(indices, rows)):
                hot[j, self.label_ids(i, r)] = 1.0
            inputs["labels"] = hot
        return {"inputs": inputs, "ids": self._ids(rows, texts), "index": list(indices),
                "meta": {"texts": texts, "pairs": pairs}}

    def loss_sum(self, outputs: Any, labels: torch.Tensor,
                 weights: Optional[torch.Tensor]) -> torch.Tensor:
        import torch.nn.functional as F
        # Class weights act on the positive term of each label, the usual remedy for rare tags.
        return F.binary_cross_entropy_with_logits(outputs.logits.float(), labels.float(),
                                                  pos_weight=weights, reduction="sum")

    def units(self, labels: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        import torch
        # One unit per (example, label) decision, as BCE's mean has it; pos_weight scales a
        # positive term but is no normaliser, so the count is the same with class weights.
        return labels.new_full((), labels.numel(), dtype=torch.float64)

    def records(self, outputs: Any, batch: dict[str, Any], *, full: bool = False) -> list[dict]:
        import torch.nn.functional as F
        logits = outputs.logits.float()
        probs = logits.sigmoid()
        hot = probs > self.cfg.threshold
        labels = batch["inputs"].get("labels")
        losses = (None if labels is None else F.binary_cross_entropy_with_logits(
            logits, labels.to(logits.device).float(), reduction="none").mean(-1).tolist())
        out = []
        for j in range(len(probs)):
            pred = hot[j].nonzero().flatten().tolist()
            rec = {"index": batch["index"][j], "id": batch["ids"][j], "pred": pred}
            if labels is not None:
                gold = labels[j].nonzero().flatten().tolist()
                # How sure the model was of its worst decision: p for a false tag, 1-p for a
                # missed one.
                wrong = [probs[j, k].item() for k in set(pred) - set(gold)]
                wrong += [1 - probs[j, k].item() for k in set(gold) - set(pred)]
                rec.update(gold=gold, loss=losses[j], confidence=max(wrong, default=0.0))
                if wrong:
                    rec["text"] = batch["meta"]["texts"][j]
            if full:
                rec["text"] = batch["meta"]["texts"][j]
                rec["scores"] = {name: probs[j, k].item() for k, name in enumerate(self.labels)}
            out.append(rec)
        return out

    def metrics(self, records: list[dict]) -> dict[str, Any]:
        report = multilabel_report([r["gold"] for r in records], [r["pred"] for r in records],
                                   self.labels, self.cfg.threshold)
        return {"loss": math.fsum(r["loss"] for r in records) / max(len(records), 1), **report}

    def errors(self, records: list[dict]) -> list[dict]:
        wrong = [r for r in records if r["gold"] != r["pred"]]
        wrong.sort(key=lambda r: (-r["confidence"], r["index"]))
        return [{"index": r["index"], "id": r["id"], "text": r["text"],
                 "gold": [self.labels[k] for k in r["gold"]],
                 "predicted": [self.labels[k] for k in r["pred"]],
                 "confidence": round(r["confidence"], 6)} for r in wrong]

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"micro_f1": metrics["micro_f1"], "macro_f1": metrics["macro_f1"]}

    def table(self, metrics: dict[str, Any]) -> Table:
        table = scores_table(f"Per label (eval, threshold {self.cfg.threshold})", "label", metrics["per_label"])
        table.add_row("micro", f"{metrics['micro_precision']:.4f}",
                      f"{metrics['micro_recall']:.4f}", f"{metrics['micro_f1']:.4f}", "",
                      style="bold")
        return table

    def prediction(self, record: dict) -> dict:
        return {"predicted": [self.labels[k] for k in record["pred"]],
                "scores": {k: round(v, 6) for k, v in record["scores"].items()}}
