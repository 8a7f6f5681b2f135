"""Named-entity recognition (CoNLL-2003 style BIO tags) as token classification.

Rows hold words and one tag per word. Tags are aligned to word pieces: the first piece of a
word carries its tag, later pieces and special tokens carry -100 so the loss skips them, and a
word's prediction is read from its first piece, as in the BERT paper.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # torch loads only where tensors are made: planning stays light
    import torch

from rich.table import Table

from launcher.errors import RecipeError
from launcher.metrics import ner_report
from launcher.metrics.ner import entities
from launcher.tasks.base import Task, row_error, scores_table

IGNORE = -100


class TokenClassification(Task):
    type = "token_classification"
    main_metric = "f1"
    metric_names = ("f1", "precision", "recall", "token_accuracy", "loss")
    default_text, default_label = "tokens", "ner_tags"
    auto_model = "AutoModelForTokenClassification"

    def validate(self) -> None:
        super().validate()
        bad = [t for t in self.labels if t != "O" and not t.startswith(("B-", "I-"))]
        if bad:
            raise RecipeError("task.labels", f"tags {bad} are neither 'O' nor 'B-TYPE'/'I-TYPE'",
                              "list the BIO tag set, e.g. ('O', 'B-PER', 'I-PER', 'B-LOC', ...)")

    def is_empty(self, row: dict) -> bool:
        words = row.get(self.cols.text)
        return not words or all(not str(w).strip() for w in words)

    def tag_ids(self, index: int, row: dict) -> list[int]:
        words, tags = row.get(self.cols.text), row.get(self.cols.label)
        if not isinstance(words, (list, tuple)):
            raise row_error(index, row, self.cols, "data.text_column",
                            f"column '{self.cols.text}' holds {type(words).__name__}, not a list "
                            "of words", "point data.text_column at the list of tokens")
        if not isinstance(tags, (list, tuple)) or len(tags) != len(words):
            got = len(tags) if isinstance(tags, (list, tuple)) else repr(tags)
            raise row_error(index, row, self.cols, "data.label_column",
                            f"column '{self.cols.label}' has {got} tags for {len(words)} words",
                            "give exactly one tag per word")
        ids = []
        for pos, tag in enumerate(tags):
            if isinstance(tag, str) and tag in self.labels:
                ids.append(self.labels.index(tag))
            elif isinstance(tag, int) and not isinstance(tag, bool) and 0 <= tag < len(self.labels):
                ids.append(tag)
            else:
                raise row_error(index, row, self.cols, "data.label_column",
                                f"tag {tag!r} of word {pos} ('{words[pos]}') is not in the tag "
                                f"set task.labels {list(self.labels)}",
                                "add the tag to task.labels (ids index that list) or fix the row")
        return ids

    def check_row(self, index: int, row: dict) -> list[int]:
        return self.tag_ids(index, row)

    def encode(self, rows: Sequence[dict], tokenizer: Any, *, indices: Sequence[int],
               labeled: bool = True) -> dict[str, Any]:
        import torch
        d = self.data
        words = [[str(w) for w in r[self.cols.text]] for r in rows]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=d.max_length,
                        padding=True, pad_to_multiple_of=d.pad_to_multiple_of, return_tensors="pt")
        # first[j][w] = position of word w's first piece (None when truncation cut it off)
        first: list[list[Optional[int]]] = []
        for j in range(len(rows)):
            pos: list[Optional[int]] = [None] * len(words[j])
            for t, w in enumerate(enc.word_ids(j)):
                if w is not None and pos[w] is None:
                    pos[w] = t
            first.append(pos)
        inputs = dict(enc)
        gold = None
        if labeled:
            gold = [self.tag_ids(i, r) for i, r in zip(indices, rows)]
            labels = torch.full(enc["input_ids"].shape, IGNORE, dtype=torch.long)
            for j, pos in enumerate(first):
                for w, t in enumerate(pos):
                    if t is not None:
                        labels[j, t] = gold[j][w]
            inputs["labels"] = labels
        ids = [str(r[self.cols.id]) if self.cols.id and r.get(self.cols.id) is not None
               else " ".join(w)[:80] for r, w in zip(rows, words)]
        return {"inputs": inputs, "ids": ids, "index": list(indices),
                "meta": {"words": words, "first": first, "gold": gold}}

    def loss_sum(self, outputs: Any, labels: torch.Tensor,
                 weights: Optional[torch.Tensor]) -> torch.Tensor:
        import torch.nn.functional as F
        logits = outputs.logits.float()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), weight=weights,
                               ignore_index=IGNORE, label_smoothing=self.cfg.label_smoothing,
                               reduction="sum")

    def units(self, labels: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        import torch
        # Labelled tokens (each word's first piece); with class weights, their summed weight.
        labelled = labels != IGNORE
        if weights is None:
            return labelled.sum(dtype=torch.float64)
        # Masked by multiplication, not indexing: a boolean index would wait for the device.
        return (weights.double()[labels.clamp(min=0)] * labelled).sum()

    def records(self, outputs: Any, batch: dict[str, Any], *, full: bool = False) -> list[dict]:
        import torch.nn.functional as F
        logits = outputs.logits.float()
        probs = logits.softmax(-1)
        conf, pred = probs.max(-1)
        conf, pred = conf.tolist(), pred.tolist()
        labels = batch["inputs"].get("labels")
        losses = None
        if labels is not None:
            per_token = F.cross_entropy(logits.transpose(1, 2), labels.to(logits.device),
                                        ignore_index=IGNORE, reduction="none")
            counted = (labels != IGNORE).sum(-1).clamp(min=1).to(per_token.device)
            losses = (per_token.sum(-1) / counted).tolist()
        meta, out = batch["meta"], []
        for j, pos in enumerate(meta["first"]):
            # A word cut off by data.max_length is predicted 'O' and counted, not dropped.
            tags = [self.labels[pred[j][t]] if t is not None else "O" for t in pos]
            confs = [conf[j][t] if t is not None else 0.0 for t in pos]
            rec = {"index": batch["index"][j], "id": batch["ids"][j], "pred": tags,
                   "truncated_words": sum(t is None for t in pos)}
            if meta["gold"] is not None:
                gold = [self.labels[k] for k in meta["gold"][j]]
                wrong = [c for g, p, c in zip(gold, tags, confs) if g != p]
                rec.update(gold=gold, loss=losses[j],
                           confidence=sum(wrong) / len(wrong) if wrong else 0.0)
                if wrong:
                    rec["words"] = meta["words"][j]
            if full:
                rec["words"] = meta["words"][j]
            out.append(rec)
        return out

    def metrics(self, records: list[dict]) -> dict[str, Any]:
        report = ner_report([r["gold"] for r in records], [r["pred"] for r in records])
        return {"loss": math.fsum(r["loss"] for r in records) / max(len(records), 1),
                **report, "truncated_words": sum(r["truncated_words"] for r in records)}

    def errors(self, records: list[dict]) -> list[dict]:
        wrong = [r for r in records if r["gold"] != r["pred"]]
        wrong.sort(key=lambda r: (-r["confidence"], r["index"]))
        return [{"index": r["index"], "id": r["id"], "text": " ".join(r["words"]),
                 "gold": _spans(r["words"], r["gold"]), "predicted": _spans(r["words"], r["pred"]),
                 "confidence": round(r["confidence"], 6)} for r in wrong]

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"f1": metrics["f1"], "precision": metrics["precision"], "recall": metrics["recall"]}

    def table(self, metrics: dict[str, Any]) -> Table:
        table = scores_table("Per entity type (eval, seqeval)", "entity", metrics["per_entity"])
        table.add_row("all", f"{metrics['precision']:.4f}", f"{metrics['recall']:.4f}",
                      f"{metrics['f1']:.4f}", "", style="bold")
        return table

    def prediction(self, record: dict) -> dict:
        return {"predicted": record["pred"],
                "entities": _spans(record["words"], record["pred"])}


def _spans(words: list[str], tags: list[str]) -> list[list]:
    """[type, 'the words'] per entity, readable in errors.jsonl and predictions."""
    return [[kind, " ".join(words[start:end])] for kind, start, end in entities(tags)]
