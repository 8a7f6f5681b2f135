"""SQuAD v2.0 exact match and F1, with the official evaluation script's definitions.

Leaderboard and paper numbers for SQuAD v2 come from the official ``evaluate-v2.0.py``;
small deviations (a different normalisation order, F1 on unanswerable questions, how ties in
no-answer probability are walked) move the score by tenths of a point, so this module
reimplements that script's rules one for one, quirks included, on plain lists instead of the
JSON files the script reads.  Example ``i`` of every list argument is the same question.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Optional, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the words a/an/the, collapse whitespace.

    The order is the official one and matters: punctuation goes *before* article removal and
    is deleted, not replaced by a space, so ``"Eiffel-Tower"`` becomes ``"eiffeltower"`` and
    ``"the-end"`` becomes ``"theend"`` (no article left to remove).
    """
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(s: str) -> list[str]:
    """The normalised answer split on whitespace: the bag of tokens F1 compares."""
    return normalize_answer(s).split() if s else []


def exact_match(gold: str, pred: str) -> int:
    """1 if the two answers are equal after normalisation, else 0."""
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1(gold: str, pred: str) -> float:
    """Token-overlap F1 of the normalised answers (tokens counted with multiplicity).

    If either side normalises to no tokens (the unanswerable case, or an answer such as
    ``"the"``), F1 is 1.0 when both are empty and 0.0 otherwise.
    """
    gold_tokens = answer_tokens(gold)
    pred_tokens = answer_tokens(pred)
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _scoring_golds(answers: Sequence[str]) -> list[str]:
    """Gold answers that normalise to something; ``[""]`` when none do (unanswerable)."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def _summary(exact: Sequence[float], f1s: Sequence[float], ids: Sequence[int]) -> dict[str, Any]:
    """``exact`` and ``f1`` in percent (0-100) over ``ids``, plus their count."""
    total = len(ids)
    return {
        "exact": 100.0 * sum(exact[i] for i in ids) / total if total else 0.0,
        "f1": 100.0 * sum(f1s[i] for i in ids) / total if total else 0.0,
        "total": total,
    }


def _best_threshold(preds: Sequence[str], scores: Sequence[float], na_probs: Sequence[float],
                    has_answer: Sequence[bool]) -> tuple[float, float]:
    """(best score in percent, the no-answer threshold reaching it), as ``find_best_thresh``.

    Start from "answer nothing" (every unanswerable question right), then admit questions in
    increasing no-answer probability: an answerable one adds its raw score, an unanswerable
    one costs 1 if the raw prediction string is non-empty.  Ties in probability are walked in
    input order and the first strict improvement wins, exactly as the official script's
    stable sort does.
    """
    current = best = float(sum(1 for has in has_answer if not has))
    best_thresh = 0.0
    for i in sorted(range(len(na_probs)), key=lambda k: na_probs[k]):
        if has_answer[i]:
            current += scores[i]
        elif preds[i]:
            current -= 1
        if current > best:
            best, best_thresh = current, float(na_probs[i])
    return (100.0 * best / len(scores) if scores else 0.0), best_thresh


def squad_v2_report(golds: Sequence[Sequence[str]], preds: Sequence[str],
                    na_probs: Optional[Sequence[float]] = None,
                    na_threshold: float = 1.0) -> dict[str, Any]:
    """The official script's output dict for these questions.

    ``golds[i]`` lists the gold answer texts of question ``i`` (empty = unanswerable),
    ``preds[i]`` is the predicted text ("" = predicted unanswerable) and ``na_probs[i]`` the
    model's no-answer probability.  A question with ``na_probs[i] > na_threshold`` is treated
    as answered "no answer": it scores 1 if unanswerable and 0 otherwise, whatever its text.
    Without ``na_probs`` every probability is 0.0, as in the script, and the ``best_*`` keys
    are left out.  HasAns/NoAns keys appear only for a non-empty group; a question whose gold
    answers all normalise to nothing still counts as HasAns (the script decides by the raw
    list) but is scored against "".
    """
    if len(golds) != len(preds):
        raise ValueError(f"golds has {len(golds)} questions but preds has {len(preds)}")
    if na_probs is not None and len(na_probs) != len(preds):
        raise ValueError(f"na_probs has {len(na_probs)} values but preds has {len(preds)}")
    probs = list(na_probs) if na_probs is not None else [0.0] * len(preds)
    has_answer = [bool(answers) for answers in golds]
    raw_exact: list[float] = []
    raw_f1: list[float] = []
    for answers, pred in zip(golds, preds):
        candidates = _scoring_golds(answers)
        raw_exact.append(max(exact_match(a, pred) for a in candidates))
        raw_f1.append(max(f1(a, pred) for a in candidates))
    exact = [float(not has) if p > na_threshold else s
             for s, p, has in zip(raw_exact, probs, has_answer)]
    f1s = [float(not has) if p > na_threshold else s
           for s, p, has in zip(raw_f1, probs, has_answer)]
    report = _summary(exact, f1s, range(len(preds)))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [i for i, has in enumerate(has_answer) if has is wanted]
        if ids:
            report.update({f"{prefix}_{k}": v for k, v in _summary(exact, f1s, ids).items()})
    if na_probs is not None:
        report["best_exact"], report["best_exact_thresh"] = _best_threshold(
            preds, raw_exact, probs, has_answer)
        report["best_f1"], report["best_f1_thresh"] = _best_threshold(
            preds, raw_f1, probs, has_answer)
    return report
