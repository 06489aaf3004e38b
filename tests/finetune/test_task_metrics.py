"""Task metrics against hand-computed values, seqeval (entities) and scikit-learn (classes)."""

import numpy as np
import pytest

from llmzoo.objectives.task_metrics import (
    accuracy,
    bio_entities,
    classification_report,
    confusion_matrix,
    entity_report,
    macro_f1,
)

GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O"]]
# A boundary error (PER cut short), a correct LOC and a type error (ORG predicted as LOC).
PRED = [["B-PER", "O", "O", "B-LOC"], ["B-LOC", "I-LOC", "I-LOC", "O"]]


def test_bio_entities_follow_the_default_seqeval_rules():
    assert bio_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert bio_entities(["O", "I-PER", "I-PER"]) == [("PER", 1, 2)]  # I- after O starts one
    assert bio_entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]  # type change
    assert bio_entities(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 0), ("PER", 1, 2)]
    assert bio_entities(["I-A", "B-A", "O", "O"]) == [("A", 0, 0), ("A", 1, 1)]


def test_entity_report_matches_hand_computed_scores():
    r = entity_report(GOLD, PRED)
    # Gold PER(0-1) LOC(3) ORG(0-2); predicted PER(0-0) LOC(3) LOC(0-2): one exact match.
    assert r["micro"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3,
                                        "support": 3})  # fmt: skip
    assert r["per_type"]["LOC"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3,
                                                  "support": 1})  # fmt: skip
    assert r["per_type"]["ORG"]["f1"] == 0.0 and r["per_type"]["PER"]["f1"] == 0.0
    assert r["macro"]["f1"] == pytest.approx((2 / 3) / 3)
    assert r["macro"]["precision"] == pytest.approx(0.5 / 3)


def test_entity_report_matches_seqeval_on_random_tags():
    from seqeval.metrics import classification_report as seqeval_report
    from seqeval.metrics.sequence_labeling import get_entities

    rng = np.random.default_rng(0)
    tags = np.array(["O", "O", "B-A", "I-A", "B-B", "I-B", "B-C"])
    lengths = rng.integers(1, 12, size=300)
    gold = [list(rng.choice(tags, n)) for n in lengths]
    pred = [list(rng.choice(tags, n)) for n in lengths]
    for seq in gold[:50]:
        assert bio_entities(seq) == get_entities(seq)
    ours = entity_report(gold, pred)
    ref = seqeval_report(gold, pred, output_dict=True, zero_division=0)
    for name, got in [*ours["per_type"].items(), ("micro avg", ours["micro"]),
                      ("macro avg", ours["macro"])]:  # fmt: skip
        want = ref[name]
        assert got["precision"] == pytest.approx(want["precision"], abs=1e-12), name
        assert got["recall"] == pytest.approx(want["recall"], abs=1e-12), name
        assert got["f1"] == pytest.approx(want["f1-score"], abs=1e-12), name
        assert got["support"] == want["support"], name
    assert 0.05 < ours["micro"]["f1"] < 0.5  # random tags: some, not all, entities match


def test_classification_metrics_match_hand_computed_values():
    y_true, y_pred = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2]
    cm = confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # F1 per class: 2*.5*.5/1 = .5; 2*(2/3)*1/(5/3) = .8; 2*1*.5/1.5 = 2/3.
    assert macro_f1(y_true, y_pred, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    report = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert report["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0,
                                                      "f1": 0.8, "support": 2})  # fmt: skip
    assert report["confusion_matrix"] == cm.tolist() and report["labels"] == ["a", "b", "c"]


def test_classification_metrics_match_sklearn():
    from sklearn import metrics

    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 5, 400), rng.integers(0, 4, 400)  # class 4 never predicted
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, 5), metrics.confusion_matrix(y_true, y_pred)
    )
    want = metrics.f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert macro_f1(y_true, y_pred, 5) == pytest.approx(want, abs=1e-12)
    assert accuracy(y_true, y_pred) == pytest.approx(metrics.accuracy_score(y_true, y_pred))
