"""launcher.metrics: hand-computed cases (checkable on paper) plus cross-checks against the
reference implementations (seqeval, sklearn) where those are installed."""

from __future__ import annotations

import random
import warnings

import pytest

from launcher.metrics import (classification_report, multilabel_report, ner_report,
                              squad_v2_report)
from launcher.metrics.ner import entities, split_tag
from launcher.metrics.squad_v2 import exact_match, f1, normalize_answer

approx = pytest.approx


# --------------------------------------------------------------------------- classification

def test_classification_zero_division_and_macro_vs_weighted():
    # gold a a a b b c, pred a a b b b a: class c is never predicted.
    # confusion rows (gold) a: [2,1,0]  b: [0,2,0]  c: [1,0,0]
    # a: P 2/3 R 2/3 F 2/3 | b: P 2/3 R 1 F 4/5 | c: P 0 (0/0) R 0/1 F 0
    report = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 0], ["a", "b", "c"])
    assert report["examples"] == 6
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["accuracy"] == approx(4 / 6)
    assert report["per_class"]["a"] == approx({"precision": 2 / 3, "recall": 2 / 3,
                                               "f1": 2 / 3, "support": 3})
    assert report["per_class"]["b"] == approx({"precision": 2 / 3, "recall": 1.0,
                                               "f1": 0.8, "support": 2})
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                        "support": 1}
    assert report["macro_precision"] == approx(4 / 9)       # (2/3 + 2/3 + 0) / 3
    assert report["macro_recall"] == approx(5 / 9)          # (2/3 + 1 + 0) / 3
    assert report["macro_f1"] == approx(22 / 45)            # (2/3 + 4/5 + 0) / 3
    assert report["weighted_precision"] == approx(5 / 9)    # (3*2/3 + 2*2/3 + 1*0) / 6
    assert report["weighted_recall"] == approx(4 / 6)       # always equals accuracy
    assert report["weighted_f1"] == approx(0.6)             # (3*2/3 + 2*4/5 + 1*0) / 6


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match="3 examples but pred has 2"):
        classification_report([0, 1, 0], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="example 1: pred label id 2"):
        classification_report([0, 1], [0, 2], ["a", "b"])
    empty = classification_report([], [], ["a", "b"])
    assert empty["examples"] == 0 and empty["accuracy"] == 0.0 and empty["weighted_f1"] == 0.0


def test_classification_matches_sklearn_on_random_data():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    labels = ["a", "b", "c", "d"]
    gold = [rng.choice([0, 0, 1, 2]) for _ in range(200)]        # class 3 never in gold
    pred = [g if rng.random() < 0.6 else rng.randrange(4) for g in gold]
    report = classification_report(gold, pred, labels)
    ids = list(range(len(labels)))
    assert report["confusion_matrix"] == metrics.confusion_matrix(gold, pred, labels=ids).tolist()
    for average in ("macro", "weighted"):
        p, r, f, _ = metrics.precision_recall_fscore_support(
            gold, pred, labels=ids, average=average, zero_division=0)
        assert report[f"{average}_precision"] == approx(p)
        assert report[f"{average}_recall"] == approx(r)
        assert report[f"{average}_f1"] == approx(f)


# --------------------------------------------------------------------------- multi-label

def test_multilabel_micro_vs_macro_with_empty_example():
    gold = [{0, 1}, {1}, set(), {0}]
    pred = [{0}, {1, 2}, set(), {0, 1}]
    # x: tp 2 pred 2 gold 2 -> F 1 | y: tp 1 pred 2 gold 2 -> F 1/2 | z: tp 0 pred 1 gold 0 -> 0
    report = multilabel_report(gold, pred, ["x", "y", "z"], threshold=0.5)
    assert report["examples"] == 4
    assert report["threshold"] == 0.5
    assert report["micro_precision"] == approx(3 / 5)
    assert report["micro_recall"] == approx(3 / 4)
    assert report["micro_f1"] == approx(2 / 3)              # 2*3 / (5 + 4)
    assert report["macro_f1"] == approx(0.5)                # (1 + 1/2 + 0) / 3
    assert report["subset_accuracy"] == approx(1 / 4)       # only the empty example matches
    assert report["per_label"]["y"] == approx({"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                               "support": 2})
    assert report["per_label"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                        "support": 0}


def test_multilabel_rejects_bad_input():
    with pytest.raises(ValueError, match="example 0: gold label id 5"):
        multilabel_report([[5]], [[0]], ["x", "y"], 0.5)
    with pytest.raises(ValueError, match="2 examples but pred has 1"):
        multilabel_report([[0], [1]], [[0]], ["x", "y"], 0.5)


def test_multilabel_matches_sklearn_on_random_data():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(1)
    n = 5
    gold = [{i for i in range(n) if rng.random() < 0.3} for _ in range(150)]
    pred = [{i for i in range(n) if (i in g) != (rng.random() < 0.2)} for g in gold]
    report = multilabel_report(gold, pred, [f"l{i}" for i in range(n)], 0.5)

    def onehot(sets):
        return [[int(i in s) for i in range(n)] for s in sets]

    y_true, y_pred = onehot(gold), onehot(pred)
    p, r, f, _ = metrics.precision_recall_fscore_support(y_true, y_pred, average="micro",
                                                         zero_division=0)
    assert (report["micro_precision"], report["micro_recall"], report["micro_f1"]) == approx(
        (p, r, f))
    assert report["macro_f1"] == approx(metrics.f1_score(y_true, y_pred, average="macro",
                                                         zero_division=0))
    assert report["subset_accuracy"] == approx(metrics.accuracy_score(y_true, y_pred))


# --------------------------------------------------------------------------- NER

@pytest.mark.parametrize("tags, expected", [
    (["O", "I-PER", "I-PER", "O"], [("PER", 1, 3)]),                # I- without B- starts one
    (["I-PER", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 2)]),           # type switch: two
    (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),           # B always starts one
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),
    (["B-PER", "I-PER", "O", "I-PER"], [("PER", 0, 2), ("PER", 3, 4)]),
    (["O", "O", "B-LOC"], [("LOC", 2, 3)]),                         # closed at sentence end
    (["S-PER", "B-LOC", "E-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3), ("LOC", 3, 4)]),
    (["B", "I", "O", "B-"], [("_", 0, 2), ("_", 3, 4)]),            # untyped chunks
    (["I-ORG-x", "I-ORG-x"], [("ORG-x", 0, 2)]),                    # type is all after 1st '-'
    ([], []),
])
def test_entities_follow_conlleval_rules(tags, expected):
    assert entities(tags) == expected


def test_tags_without_prefix_are_rejected():
    assert split_tag("B-PER") == ("B", "PER")
    for bad in ("PER", "O-PER", "X-PER", "b-PER", ""):
        with pytest.raises(ValueError, match="is not 'O' or B-/I-/E-/S-"):
            entities(["O", bad])
    with pytest.raises(ValueError, match="sentence 1: tag 'LOC'"):
        ner_report([["O"], ["LOC"]], [["O"], ["O"]])


def test_ner_report_wrong_boundary_is_a_miss_both_ways():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]
    # gold PER[0,2) LOC[3,4) ORG[0,1); pred PER[0,1) LOC ORG: 2 of 3 match on each side
    report = ner_report(gold, pred)
    assert report["sentences"] == 2
    assert (report["precision"], report["recall"], report["f1"]) == approx((2 / 3, 2 / 3, 2 / 3))
    assert report["token_accuracy"] == approx(5 / 6)
    assert list(report["per_entity"]) == ["LOC", "ORG", "PER"]
    assert report["per_entity"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                           "support": 1}
    assert report["per_entity"]["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0,
                                           "support": 1}


def test_ner_report_predicted_only_type_and_no_cross_sentence_entities():
    # The pred's I-PER at the start of sentence 1 must not continue sentence 0's entity.
    report = ner_report([["O", "B-PER"], ["I-PER", "O"]], [["B-MISC", "B-PER"], ["I-PER", "O"]])
    assert report["per_entity"]["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                            "support": 0}
    assert report["per_entity"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0,
                                           "support": 2}
    assert (report["precision"], report["recall"]) == approx((2 / 3, 1.0))


def test_ner_report_rejects_misaligned_input():
    with pytest.raises(ValueError, match="sentence 1: gold has 2 tags but pred has 1"):
        ner_report([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="gold has 2 sentences but pred has 1"):
        ner_report([["O"], ["O"]], [["O"]])


def _random_corpus(rng: random.Random, tagset: list[str], sentences: int) -> tuple[list, list]:
    gold, pred = [], []
    for _ in range(sentences):
        length = rng.randint(0, 12)
        g = [rng.choice(tagset) for _ in range(length)]
        # Pred: mostly gold with some tokens replaced, so that many entities match and many
        # are off by a boundary or a type.
        p = [t if rng.random() < 0.7 else rng.choice(tagset) for t in g]
        gold.append(g)
        pred.append(p)
    return gold, pred


@pytest.mark.parametrize("tagset", [
    ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "B-MISC"],      # BIO / IOB2
    ["O", "O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "E-LOC", "S-LOC", "I-LOC"],  # IOBES
])
def test_ner_matches_seqeval_default_mode(tagset):
    pytest.importorskip("seqeval")
    from seqeval.metrics import (classification_report as seqeval_report, f1_score,
                                 precision_score, recall_score)
    from seqeval.metrics.sequence_labeling import get_entities

    gold, pred = _random_corpus(random.Random(1234), tagset, 300)
    for sentence in gold + pred:
        # seqeval's spans are end-inclusive, ours end-exclusive.
        assert entities(sentence) == [(t, s, e + 1) for t, s, e in get_entities(sentence)]
    report = ner_report(gold, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert report["precision"] == approx(precision_score(gold, pred))
        assert report["recall"] == approx(recall_score(gold, pred))
        assert report["f1"] == approx(f1_score(gold, pred))
        reference = seqeval_report(gold, pred, output_dict=True, zero_division=0)
    types = {k: v for k, v in reference.items() if not k.endswith(" avg")}
    assert list(report["per_entity"]) == sorted(types)
    for name, row in types.items():
        ours = report["per_entity"][name]
        assert ours["support"] == row["support"]
        assert (ours["precision"], ours["recall"], ours["f1"]) == approx(
            (row["precision"], row["recall"], row["f1-score"]))
    assert 0.0 < report["f1"] < 1.0          # the random corpus is neither trivial nor empty


# --------------------------------------------------------------------------- SQuAD v2

def test_normalize_answer_official_order():
    # Punctuation is deleted (not spaced) before articles are removed.
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("eiffel tower") == "eiffel tower"
    assert exact_match("The  Eiffel-Tower!", "eiffel tower") == 0
    assert f1("The  Eiffel-Tower!", "eiffel tower") == 0.0       # 'eiffeltower' vs 2 tokens
    assert exact_match("The  Eiffel-Tower!", "eiffeltower.") == 1
    assert normalize_answer("An apple, a day!") == "apple day"
    assert normalize_answer("the theory of them") == "theory of them"   # whole words only
    assert normalize_answer("the-end") == "theend"


def test_f1_token_overlap():
    # gold tokens [quick brown fox], pred [quick red fox jumps]: 2 shared, P 1/2, R 2/3
    assert f1("the quick brown fox", "a quick red fox jumps") == approx(4 / 7)
    # counts with multiplicity: one shared 'ha', P 1, R 1/3 -> F 1/2
    assert f1("ha ha ha", "ha") == approx(0.5)
    assert f1("Paris", "paris!") == 1.0


def test_f1_and_exact_on_empty_answers():
    assert f1("", "") == 1.0 and exact_match("", "") == 1
    assert f1("", "London") == 0.0 and exact_match("", "London") == 0
    assert f1("the", "") == 1.0           # 'the' normalises to nothing
    assert f1("Paris", "") == 0.0


GOLDS = [["Paris", "the city of Paris"], ["1889"], [], []]
PREDS = ["paris", "in 1889", "", "London"]
# raw exact: 1, 0, 1, 0     raw F1: 1, 2/3 (P 1/2, R 1), 1, 0


def test_squad_v2_report_has_ans_no_ans_split():
    report = squad_v2_report(GOLDS, PREDS)
    assert report == approx({
        "exact": 50.0, "f1": 100 * (8 / 3) / 4, "total": 4,
        "HasAns_exact": 50.0, "HasAns_f1": 100 * (5 / 3) / 2, "HasAns_total": 2,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2,
    })
    assert list(report)[:3] == ["exact", "f1", "total"]
    only_answerable = squad_v2_report([["x"]], ["x"])
    assert set(only_answerable) == {"exact", "f1", "total", "HasAns_exact", "HasAns_f1",
                                    "HasAns_total"}
    # Gold answers that all normalise to nothing: HasAns by the raw list, scored against "".
    assert squad_v2_report([["the"]], [""])["HasAns_exact"] == 100.0


def test_squad_v2_best_thresholds_and_na_threshold():
    na_probs = [0.1, 0.4, 0.2, 0.9]
    # Start at 2 (both unanswerable right), admit in increasing probability q0 q2 q1 q3:
    # exact: +1 -> 3 (best, 0.1), +0, +0, -1 ('London' is non-empty) -> best 3/4 at 0.1
    # F1:    +1 -> 3 (0.1), +0, +2/3 -> 11/3 (best, 0.4), -1 -> best (11/3)/4 at 0.4
    report = squad_v2_report(GOLDS, PREDS, na_probs=na_probs)
    assert report["exact"] == 50.0                    # no probability exceeds the 1.0 default
    assert report["best_exact"] == approx(75.0)
    assert report["best_exact_thresh"] == 0.1
    assert report["best_f1"] == approx(100 * (11 / 3) / 4)
    assert report["best_f1_thresh"] == 0.4
    # At threshold 0.5 question 3 (p=0.9) counts as answered "no answer": right, whatever text.
    cut = squad_v2_report(GOLDS, PREDS, na_probs=na_probs, na_threshold=0.5)
    assert cut["exact"] == approx(75.0)
    assert cut["f1"] == approx(report["best_f1"])
    assert cut["NoAns_exact"] == 100.0 and cut["HasAns_exact"] == 50.0


def test_squad_v2_threshold_counts_answerable_as_wrong():
    report = squad_v2_report([["Paris"]], ["Paris"], na_probs=[0.8], na_threshold=0.5)
    assert report["exact"] == 0.0 and report["f1"] == 0.0
    # best_* use the raw scores: admitting the one question (p=0.8) scores 1, so thresh 0.8.
    assert report["best_exact"] == 100.0 and report["best_exact_thresh"] == 0.8


def test_squad_v2_rejects_misaligned_input():
    with pytest.raises(ValueError, match="golds has 2 questions but preds has 1"):
        squad_v2_report([["a"], ["b"]], ["a"])
    with pytest.raises(ValueError, match="na_probs has 1 values"):
        squad_v2_report([["a"], ["b"]], ["a", "b"], na_probs=[0.1])
