"""Task reports of classification and NER runs: predict a split, score it with label names.

``llmzoo eval --run DIR`` prints this report for a run of ``sequence_classification`` (accuracy,
macro-F1, the confusion matrix) or ``token_classification`` (entity-level precision, recall and
F1 per type, micro and macro; see :mod:`llmzoo.objectives.task_metrics`). The label names come
from the run's ``labels.json``, written when it was trained.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np

from llmzoo import run_dir as ckpt
from llmzoo.config import TrainConfig
from llmzoo.errors import DataError
from llmzoo.models import registry
from llmzoo.objectives.classify import LABELS_FILE, TASK_OF, make_task_examples
from llmzoo.objectives.task_metrics import classification_report, entity_report


def is_task_run(run_dir: str) -> bool:
    """Whether the run in ``run_dir`` trains a classification or NER objective."""
    return ckpt.read_config(run_dir).objective.name in TASK_OF


def read_labels(run_dir: str) -> list[str]:
    """The label names (by id) in the run's ``labels.json``.

    Raises:
        DataError: the file is missing or unreadable.
    """
    path = os.path.join(run_dir, LABELS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return list(json.load(f)["labels"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{path!r} is missing or unreadable ({type(e).__name__}); it is written when the run "
            "trains: train the run (or copy its labels.json back)"
        ) from None


def _batches(examples, records: list[dict], batch_size: int):
    """``records`` as examples stacked into batches of ``batch_size`` (the last one padded)."""
    for lo in range(0, len(records), batch_size):
        rows = [examples(r) for r in records[lo : lo + batch_size]]
        rows += [{k: np.zeros_like(v) for k, v in rows[0].items()}] * (batch_size - len(rows))
        yield {k: np.stack([row[k] for row in rows]) for k in rows[0]}


def predict(cfg: TrainConfig, params, examples, records: list[dict], batch_size: int) -> list:
    """Predicted label ids: one int per record (classification), or one list of word tag ids
    per record (tagging; words that do not fit the row get tag 0, ``O``)."""
    apply = jax.jit(functools.partial(registry.get(cfg.model.kind).apply, cfg=cfg.model))
    out = []
    for batch in _batches(examples, records, batch_size):
        logits = np.asarray(jax.device_get(apply(params, batch)["logits"]))
        out += list(np.argmax(logits, axis=-1))
    out = out[: len(records)]
    if examples.task == "classification":
        return [int(p) for p in out]
    tags = []
    for record, row in zip(records, out, strict=True):
        _, starts = examples.align(record["tokens"])
        word_tags = [int(row[s]) for s in starts]
        tags.append(word_tags + [0] * (len(record["tokens"]) - len(word_tags)))
    return tags


def task_report(run_dir: str, *, split: str | None = None, max_batches: int | None = None) -> dict:
    """The task report of a classification or NER run on ``split`` (default: its eval split),
    over its first ``max_batches`` batches (default: the run's ``eval_batches``, as in training).

    Returns:
        ``{'step', 'split', 'objective', 'examples', **report}``: classification adds
        :func:`~llmzoo.objectives.task_metrics.classification_report`'s keys, tagging
        :func:`~llmzoo.objectives.task_metrics.entity_report`'s plus ``entity_f1`` (micro).
    """
    cfg, params, step = ckpt.load_params(run_dir)
    names = read_labels(run_dir)
    examples = make_task_examples(cfg, ckpt.read_tokenizer(run_dir), names)
    split = split or cfg.data.eval_split
    records = examples.load(cfg.data, split)
    records = records[: (max_batches or cfg.eval_batches) * cfg.batch_size]
    pred = predict(cfg, params, examples, records, cfg.batch_size)
    head = {"step": step, "split": split, "objective": cfg.objective.name}
    if examples.task == "classification":
        gold = [examples.ids[r["label"]] for r in records]
        return head | classification_report(gold, pred, names)
    report = entity_report([r["tags"] for r in records], [[names[i] for i in p] for p in pred])
    return head | {"examples": len(records), "entity_f1": report["micro"]["f1"]} | report


def format_report(report: dict) -> str:
    """The report as a readable table (the confusion matrix, or the per-type entity scores)."""
    lines = [f"{report['objective']} on {report['split']!r} at step {report['step']}: "
             f"{report['examples']} examples"]  # fmt: skip
    if "confusion_matrix" in report:
        names = report["labels"]
        lines.append(f"accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}")
        width = max(8, *(len(n) + 1 for n in names))
        lines.append("confusion matrix (rows: true, columns: predicted):")
        lines.append(" " * width + "".join(f"{n:>{width}}" for n in names))
        for name, row in zip(names, report["confusion_matrix"], strict=True):
            lines.append(f"{name:>{width}}" + "".join(f"{v:>{width}}" for v in row))
        return "\n".join(lines)
    lines.append(f"{'type':>10}{'precision':>11}{'recall':>9}{'f1':>9}{'support':>9}")
    rows = list(report["per_type"].items()) + [
        ("micro", report["micro"]),
        ("macro", report["macro"]),
    ]
    for name, s in rows:
        lines.append(f"{name:>10}{s['precision']:>11.4f}{s['recall']:>9.4f}{s['f1']:>9.4f}"
                     f"{s['support']:>9d}")  # fmt: skip
    return "\n".join(lines)


def add_task_report(summary: dict) -> list[str]:
    """After a classification or NER run has trained: its task report on the validation split,
    added to ``summary`` (``val_macro_f1`` or ``val_entity_f1``), as lines to print beside the
    baseline. Other runs (and runs of several processes) give no lines."""
    baselines = {
        "majority_class_accuracy": "always the most frequent train label, accuracy",
        "most_frequent_tag_f1": "each word's most frequent train tag, entity F1",
    }
    found = [k for k in baselines if summary.get(k) is not None]
    if not found or jax.process_count() > 1:
        return []
    report = task_report(summary["run_dir"])
    key = "macro_f1" if "macro_f1" in report else "entity_f1"
    summary[f"val_{key}"] = report[key]
    return [format_report(report), f"baseline ({baselines[found[0]]}): {summary[found[0]]:.4f}"]
