"""Extractive question answering, SQuAD v2 style (unanswerable questions included).

A long context is split into windows of data.max_length tokens that overlap by
data.doc_stride tokens. Every window of an example is encoded in the same batch, so the span
post-processing sees all of them together: the best span over all windows is compared with the
null score ([CLS] start + [CLS] end, the lowest over windows), and mapped back to characters of
the context through the tokenizer's offsets. The question is answered when best - null >
task.null_threshold; that decision is final: predict prints it and eval scores it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # torch loads only where tensors are made: planning stays light
    import torch

from rich.table import Table

from launcher.errors import RecipeError
from launcher.metrics import squad_v2_report
from launcher.metrics.squad_v2 import f1 as span_f1
from launcher.tasks.base import Task, row_error

N_BEST = 20
# |task.null_threshold| beyond this decides every question the same way, whatever the model says.
NULL_LIMIT = 100.0


class QuestionAnswering(Task):
    type = "question_answering"
    main_metric = "f1"
    metric_names = ("f1", "exact", "HasAns_f1", "HasAns_exact", "NoAns_f1", "NoAns_exact",
                    "loss")
    default_text, default_pair, default_label = "question", "context", "answers"
    auto_model = "AutoModelForQuestionAnswering"

    @property
    def stride(self) -> int:
        return self.data.doc_stride if self.data.doc_stride is not None else self.data.max_length // 4

    def validate(self) -> None:
        if self.labels:
            raise RecipeError("task.labels", "is not used by question_answering (answers are "
                              "spans of the context)", "remove task.labels")
        if not 0 < self.stride < self.data.max_length // 2:
            raise RecipeError("data.doc_stride", f"is {self.stride} but must be between 1 and "
                              f"half of data.max_length ({self.data.max_length // 2})",
                              f"set data.doc_stride to about {self.data.max_length // 4}")
        t = self.cfg.null_threshold
        if not -NULL_LIMIT <= t <= NULL_LIMIT:  # NaN fails both comparisons
            raise RecipeError("task.null_threshold", f"is {t}, outside -{NULL_LIMIT:g}..."
                              f"{NULL_LIMIT:g}: it is compared with best span score minus "
                              "no-answer score (sums of two logits, in practice within about "
                              f"+-40), so {t} would answer every question with a span or none",
                              "keep it near 0 (0.0 is the usual value; tune it on eval data)")
        if self.cfg.max_answer_length < 1:
            raise RecipeError("task.max_answer_length", "must be 1 or more",
                              "set task.max_answer_length to e.g. 30")

    def config_kwargs(self) -> dict[str, Any]:
        return {}

    def is_empty(self, row: dict) -> bool:
        return not str(row.get(self.cols.text) or "").strip() or \
            not str(row.get(self.cols.pair) or "").strip()

    def answers(self, index: int, row: dict) -> list[tuple[str, int]]:
        value, context = row.get(self.cols.label), str(row.get(self.cols.pair) or "")
        field = "data.label_column"
        if not isinstance(value, dict) or not {"text", "answer_start"} <= value.keys():
            raise row_error(index, row, self.cols, field,
                            f"column '{self.cols.label}' holds {value!r}, not SQuAD answers",
                            "give {'text': [...], 'answer_start': [...]} ([] and [] when the "
                            "question has no answer)")
        texts, starts = list(value["text"] or []), list(value["answer_start"] or [])
        if len(texts) != len(starts):
            raise row_error(index, row, self.cols, field,
                            f"has {len(texts)} answer texts but {len(starts)} answer_start values",
                            "give one answer_start per answer text")
        out = []
        for text, start in zip(texts, starts):
            if isinstance(start, bool) or not isinstance(start, int) or start < 0 or \
                    start + len(text) > len(context):
                raise row_error(index, row, self.cols, field,
                                f"answer {text!r} at character {start!r} is outside the context "
                                f"({len(context)} characters)",
                                "fix answer_start (0-based character offset into the context)")
            if context[start:start + len(text)] != text:
                raise row_error(index, row, self.cols, field,
                                f"answer {text!r} at character {start} does not match the context "
                                f"there ({context[start:start + len(text)]!r})",
                                "fix answer_start so that context[start:start+len(text)] is the "
                                "answer")
            out.append((str(text), start))
        return out

    def check_row(self, index: int, row: dict) -> list[int]:
        return [1 if self.answers(index, row) else 0]

    def encode(self, rows: Sequence[dict], tokenizer: Any, *, indices: Sequence[int],
               labeled: bool = True) -> dict[str, Any]:
        import torch
        d = self.data
        questions = [str(r[self.cols.text]).lstrip() for r in rows]
        contexts = [str(r[self.cols.pair]) for r in rows]
        enc = tokenizer(questions, contexts, truncation="only_second", max_length=d.max_length,
                        stride=self.stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True, padding=True,
                        pad_to_multiple_of=d.pad_to_multiple_of, return_tensors="pt")
        owner = enc.pop("overflow_to_sample_mapping").tolist()
        offsets_t = enc.pop("offset_mapping").tolist()
        answers = [self.answers(i, r) for i, r in zip(indices, rows)] if labeled else None
        offsets, positions = [], []
        for f, ex in enumerate(owner):
            seq = enc.sequence_ids(f)
            # Offsets of context tokens only: a span may not start or end in the question.
            offsets.append([tuple(o) if s == 1 else None for o, s in zip(offsets_t[f], seq)])
            if answers is not None:
                positions.append(_positions(offsets[-1], answers[ex]))
        inputs = dict(enc)
        if answers is not None:
            inputs["labels"] = torch.tensor(positions, dtype=torch.long)
        ids = [str(r[self.cols.id]) if self.cols.id and r.get(self.cols.id) is not None
               else q[:80] for r, q in zip(rows, questions)]
        return {"inputs": inputs, "ids": ids, "index": list(indices),
                "meta": {"owner": owner, "offsets": offsets, "questions": questions,
                         "contexts": contexts,
                         "golds": None if answers is None else [[a for a, _ in x] for x in answers]}}

    def loss_sum(self, outputs: Any, labels: torch.Tensor,
                 weights: Optional[torch.Tensor]) -> torch.Tensor:
        import torch.nn.functional as F
        start = F.cross_entropy(outputs.start_logits.float(), labels[:, 0], reduction="sum")
        end = F.cross_entropy(outputs.end_logits.float(), labels[:, 1], reduction="sum")
        return (start + end) / 2

    def units(self, labels: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
        import torch
        # Windows: a long context's windows each count, as each is a training example of its own.
        return labels.new_full((), labels.shape[0], dtype=torch.float64)

    def records(self, outputs: Any, batch: dict[str, Any], *, full: bool = False) -> list[dict]:
        import torch
        import torch.nn.functional as F
        start, end = outputs.start_logits.float().cpu(), outputs.end_logits.float().cpu()
        meta = batch["meta"]
        labels = batch["inputs"].get("labels")
        feature_loss = None
        if labels is not None:
            feature_loss = ((F.cross_entropy(start, labels[:, 0], reduction="none") +
                             F.cross_entropy(end, labels[:, 1], reduction="none")) / 2).tolist()
        features: dict[int, list[int]] = {}
        for f, ex in enumerate(meta["owner"]):
            features.setdefault(ex, []).append(f)
        out = []
        for j in range(len(batch["index"])):
            feats = features.get(j, [])
            text, best, null, candidates = self._best_span(start, end, feats, meta["offsets"],
                                                           meta["contexts"][j])
            answered = best is not None and best - null > self.cfg.null_threshold
            scores = torch.tensor([null, *candidates]) if candidates else torch.tensor([null])
            chosen = best if answered else null
            rec = {"index": batch["index"][j], "id": batch["ids"][j],
                   # The decided answer ("" for no answer): what predict prints and eval scores.
                   "pred": text if answered else "",
                   "confidence": (chosen - torch.logsumexp(scores, 0)).exp().item()}
            if meta["golds"] is not None:
                golds = meta["golds"][j]
                rec["golds"] = golds
                rec["loss"] = sum(feature_loss[f] for f in feats) / max(len(feats), 1)
                if max((span_f1(g, rec["pred"]) for g in golds), default=float(rec["pred"] == "")) < 1:
                    rec.update(question=meta["questions"][j], context=meta["contexts"][j])
            if full:
                rec.update(question=meta["questions"][j], context=meta["contexts"][j])
            out.append(rec)
        return out

    def _best_span(self, start: torch.Tensor, end: torch.Tensor, feats: list[int],
                   offsets: list, context: str) -> tuple[str, Optional[float], float, list[float]]:
        null = min((start[f, 0] + end[f, 0]).item() for f in feats) if feats else 0.0
        best, text, candidates = None, "", []
        for f in feats:
            offs = offsets[f]
            starts = start[f].topk(min(N_BEST, start.shape[1])).indices.tolist()
            ends = end[f].topk(min(N_BEST, end.shape[1])).indices.tolist()
            for s in starts:
                if offs[s] is None:
                    continue
                for e in ends:
                    if offs[e] is None or e < s or e - s + 1 > self.cfg.max_answer_length:
                        continue
                    score = (start[f, s] + end[f, e]).item()
                    candidates.append(score)
                    if best is None or score > best:
                        best, text = score, context[offs[s][0]:offs[e][1]]
        return text, best, null, candidates

    def metrics(self, records: list[dict]) -> dict[str, Any]:
        # The answers as decided at task.null_threshold, with no no-answer probabilities: the
        # scorer applies no second threshold, so the metrics are those of what predict answers.
        report = squad_v2_report([r["golds"] for r in records], [r["pred"] for r in records])
        return {"loss": math.fsum(r["loss"] for r in records) / max(len(records), 1),
                "examples": len(records), **report}

    def errors(self, records: list[dict]) -> list[dict]:
        wrong = [r for r in records if "context" in r]
        wrong.sort(key=lambda r: (-r["confidence"], r["index"]))
        return [{"index": r["index"], "id": r["id"], "question": r["question"],
                 "context": r["context"], "gold": r["golds"], "predicted": r["pred"],
                 "confidence": round(r["confidence"], 6)} for r in wrong]

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {"exact": metrics["exact"], "f1": metrics["f1"]}

    def table(self, metrics: dict[str, Any]) -> Table:
        table = Table(title="SQuAD v2 (eval)", title_justify="left")
        for col in ("questions", "exact", "F1", "count"):
            table.add_column(col, justify="left" if col == "questions" else "right")
        for label, key in (("answerable", "HasAns"), ("unanswerable", "NoAns")):
            if f"{key}_total" in metrics:
                table.add_row(label, f"{metrics[key + '_exact']:.2f}", f"{metrics[key + '_f1']:.2f}",
                              f"{metrics[key + '_total']:,}")
        table.add_row("all", f"{metrics['exact']:.2f}", f"{metrics['f1']:.2f}",
                      f"{metrics['total']:,}", style="bold")
        return table

    def prediction(self, record: dict) -> dict:
        # "" for no answer, as in SQuAD v2 prediction files: eval scores exactly these.
        return {"predicted": record["pred"], "score": round(record["confidence"], 6)}


def _positions(offsets: list, answers: list[tuple[str, int]]) -> tuple[int, int]:
    """Token start/end of the first answer in this window, or (0, 0) -- [CLS] -- when the
    question has no answer or the answer is not wholly inside the window."""
    if not answers:
        return 0, 0
    text, start_char = answers[0]
    end_char = start_char + len(text)
    context = [t for t, o in enumerate(offsets) if o is not None]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    s = next(t for t in context if offsets[t][1] > start_char)
    e = next(t for t in reversed(context) if offsets[t][0] < end_char)
    return s, e
