"""Entity-level NER metrics with seqeval's default (conlleval-compatible, non-strict) rules.

Published CoNLL numbers come from conlleval / seqeval's default mode, which is lenient about
ill-formed tag sequences: an ``I-X`` after ``O`` or after another type *starts* an entity
instead of being dropped.  A model early in training emits many such sequences, so using the
strict rules would report different (lower) numbers than every paper and leaderboard.  This
is a reimplementation of those rules; the tests check it against seqeval itself.

Tags are ``O`` or ``<prefix>-<type>`` with prefix B, I, E or S (BIO/IOB2, and IOBES read
with the same conlleval rules).  A bare prefix (``B``, ``I``, ``E``, ``S``) or an empty type
(``B-``) is an entity of type ``_``, as in seqeval.  A tag with no prefix at all, such as
``PER``, raises ValueError: seqeval only warns and then reads its first character as the
prefix (``PER`` becomes prefix ``P`` of type ``ER``), which yields entity types that exist
nowhere in the label set; refusing is kinder than reporting them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from launcher.metrics.classification import precision_recall_f1

OUTSIDE = "O"
UNTYPED = "_"
PREFIXES = ("B", "I", "E", "S")


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``; bare ``"I"`` -> ``("I", "_")``.

    Everything after the first ``-`` is the type, so ``"I-ORG-corp"`` has type ``ORG-corp``.
    """
    if tag == OUTSIDE:
        return OUTSIDE, ""
    if tag in PREFIXES:
        return tag, UNTYPED
    prefix, dash, type_ = tag.partition("-")
    if dash and prefix in PREFIXES:
        return prefix, type_ or UNTYPED
    raise ValueError(f"tag {tag!r} is not 'O' or B-/I-/E-/S- followed by a type "
                     f"(BIO/IOB2 or IOBES tags are expected)")


def _chunk_ends(prev_prefix: str, prev_type: str, prefix: str, type_: str) -> bool:
    """Whether the entity open at the previous token ends before the current one."""
    if prev_prefix == OUTSIDE:
        return False                      # nothing is open
    if prev_prefix in ("E", "S"):
        return True                       # E and S close their entity themselves
    if prefix in ("B", "S", OUTSIDE):
        return True                       # previous is B/I: a new start or O closes it
    return prev_type != type_             # I/E continue it only with the same type


def _chunk_starts(prev_prefix: str, prev_type: str, prefix: str, type_: str) -> bool:
    """Whether a new entity starts at the current token."""
    if prefix == OUTSIDE:
        return False
    if prefix in ("B", "S"):
        return True
    if prev_prefix in (OUTSIDE, "E", "S"):
        return True                       # the lenient rule: a dangling I/E opens an entity
    return prev_type != type_             # I/E after B/I of another type opens a new one


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one sentence as ``(type, start, end)`` with ``end`` EXCLUSIVE.

    ``tags[start:end]`` are exactly the entity's tokens, so ``["O", "I-PER", "I-PER", "O"]``
    gives ``[("PER", 1, 3)]``.  (seqeval's ``get_entities`` reports the same spans with an
    inclusive end, i.e. ``("PER", 1, 2)``.)  Entities come out in order of their start.
    """
    found: list[tuple[str, int, int]] = []
    prev_prefix, prev_type, start = OUTSIDE, "", 0
    parsed = [split_tag(tag) for tag in tags]
    parsed.append((OUTSIDE, ""))          # a sentinel closes an entity at the sentence end
    for i, (prefix, type_) in enumerate(parsed):
        if _chunk_ends(prev_prefix, prev_type, prefix, type_):
            found.append((prev_type, start, i))
        if _chunk_starts(prev_prefix, prev_type, prefix, type_):
            start = i
        prev_prefix, prev_type = prefix, type_
    return found


def _check_lengths(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    """Refuse misaligned input, naming the sentence, since zip would silently truncate it."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but pred has {len(pred)}")
    for index, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {index}: gold has {len(g)} tags but pred has {len(p)}")


def ner_report(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Micro entity P/R/F1, token accuracy and per-type scores over all sentences.

    An entity counts as correct only if type, start and end all match a gold entity of the
    same sentence, so a predicted entity with a wrong boundary is both a false positive and
    a false negative.  ``per_entity`` lists every type seen in gold or pred, sorted by name;
    a type only ever predicted has support 0 and precision 0.0 (as in seqeval).
    """
    _check_lengths(gold, pred)
    gold_entities: set[tuple[int, str, int, int]] = set()
    pred_entities: set[tuple[int, str, int, int]] = set()
    tokens = correct_tokens = 0
    for index, (g, p) in enumerate(zip(gold, pred)):
        try:
            gold_entities.update((index, *entity) for entity in entities(g))
            pred_entities.update((index, *entity) for entity in entities(p))
        except ValueError as error:
            raise ValueError(f"sentence {index}: {error}") from None
        tokens += len(g)
        correct_tokens += sum(a == b for a, b in zip(g, p))
    hits = gold_entities & pred_entities
    precision, recall, f1 = precision_recall_f1(len(hits), len(pred_entities), len(gold_entities))
    hits_by_type = Counter(e[1] for e in hits)
    pred_by_type = Counter(e[1] for e in pred_entities)
    gold_by_type = Counter(e[1] for e in gold_entities)
    per_entity: dict[str, dict[str, float | int]] = {}
    for type_ in sorted(set(gold_by_type) | set(pred_by_type)):
        p_, r_, f_ = precision_recall_f1(hits_by_type[type_], pred_by_type[type_],
                                         gold_by_type[type_])
        per_entity[type_] = {"precision": p_, "recall": r_, "f1": f_,
                             "support": gold_by_type[type_]}
    return {
        "sentences": len(gold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "token_accuracy": correct_tokens / tokens if tokens else 0.0,
        "per_entity": per_entity,
    }
