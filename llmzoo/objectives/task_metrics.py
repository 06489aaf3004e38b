"""Task metrics in pure NumPy: accuracy, macro-F1 and the confusion matrix of a classifier, and
entity-level precision/recall/F1 of a BIO tagger.

Entities follow ``seqeval``'s default (non-strict, conlleval) mode: an entity starts at a ``B-``
tag, or at an ``I-`` tag after ``O`` or after a tag of another type; it ends before ``O``, ``B-``
or a tag of another type. A predicted entity counts only when its type and its exact span match a
gold entity. Precision of a type with no predictions (or recall with no gold entities) is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(y_true, y_pred) -> float:
    """The share of ``y_pred [N]`` equal to ``y_true [N]`` (0.0 for N = 0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if y_true.size else 0.0


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``[C, C]`` int64 counts: row = true class, column = predicted class (sklearn's layout).

    Args:
        y_true, y_pred: ``[N]`` int class ids in ``0 .. num_classes - 1``.
        num_classes: C.
    """
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _prf(tp, n_pred, n_true):
    """Precision, recall and F1 arrays from counts, 0 where a denominator is 0."""
    tp, n_pred, n_true = (np.asarray(x, np.float64) for x in (tp, n_pred, n_true))
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    recall = np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return precision, recall, f1


def macro_f1(y_true, y_pred, num_classes: int) -> float:
    """The unweighted mean F1 over the classes that occur in ``y_true`` or ``y_pred`` (as
    ``sklearn.metrics.f1_score(average='macro')`` without ``labels``).

    Args:
        y_true, y_pred: ``[N]`` int class ids.
        num_classes: C.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp, n_pred, n_true = np.diag(cm), cm.sum(0), cm.sum(1)
    present = (n_pred + n_true) > 0
    _, _, f1 = _prf(tp, n_pred, n_true)
    return float(f1[present].mean()) if present.any() else 0.0


def classification_report(y_true, y_pred, names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class F1 and the confusion matrix with label names.

    Args:
        y_true, y_pred: ``[N]`` int class ids.
        names: the C label names, by id.

    Returns:
        ``{'examples', 'accuracy', 'macro_f1', 'per_class': {name: {precision, recall, f1,
        support}}, 'labels': names, 'confusion_matrix': [[...]]}`` (rows true, columns predicted).
    """
    c = len(names)
    cm = confusion_matrix(y_true, y_pred, c)
    precision, recall, f1 = _prf(np.diag(cm), cm.sum(0), cm.sum(1))
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(names, precision, recall, f1, cm.sum(1), strict=True)
    }
    return {
        "examples": int(cm.sum()),
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, c),
        "per_class": per_class,
        "labels": list(names),
        "confusion_matrix": cm.tolist(),
    }


def _split_tag(tag: str) -> tuple[str, str]:
    """``'B-PER'`` -> ``('B', 'PER')``; ``'O'`` -> ``('O', '_')`` (seqeval's parse)."""
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def bio_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one BIO tag sequence, seqeval's default mode.

    Args:
        tags: ``[T]`` tags such as ``'O'``, ``'B-PER'``, ``'I-PER'``.

    Returns:
        ``[(type, start, end)]`` with ``end`` inclusive, in order.
    """
    entities, start = [], 0
    prev_tag, prev_type = "O", ""
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = _split_tag(chunk)
        ends = prev_tag in ("B", "I") and (tag in ("B", "O") or prev_type != type_)
        if ends:
            entities.append((prev_type, start, i - 1))
        if tag == "B" or (tag == "I" and (prev_tag == "O" or prev_type != type_)):
            start = i
        prev_tag, prev_type = tag, type_
    return entities


def entity_report(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision, recall and F1 per type, micro- and macro-averaged.

    Args:
        true_seqs, pred_seqs: one tag sequence per sentence, each pair of equal length.

    Returns:
        ``{'per_type': {type: {precision, recall, f1, support}}, 'micro': {...},
        'macro': {...}}``; the types are those of gold or predicted entities, sorted; ``support``
        counts gold entities; ``macro`` is the unweighted mean over the types.

    Raises:
        ValueError: a pair of sequences differs in length.
    """
    gold: set[tuple] = set()
    pred: set[tuple] = set()
    for k, (t, p) in enumerate(zip(true_seqs, pred_seqs, strict=True)):
        if len(t) != len(p):
            raise ValueError(f"sentence {k}: {len(t)} gold tags but {len(p)} predicted tags")
        gold |= {(k, *e) for e in bio_entities(t)}
        pred |= {(k, *e) for e in bio_entities(p)}
    types = sorted({e[1] for e in gold | pred})
    tp = [len({e for e in gold & pred if e[1] == ty}) for ty in types]
    n_pred = [sum(e[1] == ty for e in pred) for ty in types]
    n_true = [sum(e[1] == ty for e in gold) for ty in types]
    precision, recall, f1 = _prf(tp, n_pred, n_true)
    per_type = {
        ty: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for ty, p, r, f, s in zip(types, precision, recall, f1, n_true, strict=True)
    }
    mp, mr, mf = _prf(sum(tp), sum(n_pred), sum(n_true))
    micro = {"precision": float(mp), "recall": float(mr), "f1": float(mf), "support": len(gold)}
    macro = {
        key: float(np.mean([v[key] for v in per_type.values()])) if types else 0.0
        for key in ("precision", "recall", "f1")
    } | {"support": len(gold)}
    return {"per_type": per_type, "micro": micro, "macro": macro}
