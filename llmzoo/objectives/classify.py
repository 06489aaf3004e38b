"""Sequence classification and token classification (NER) examples, for encoders and decoders.

Records come from :mod:`llmzoo.data.labeled`; the label map is the train split's (sorted labels;
for BIO tags ``O`` first, then ``B-T``, ``I-T`` per sorted type T) and is written into the run
directory as ``labels.json``. Each example is one right-padded row of ``row_len`` tokens:

- an encoder's text gets its tokenizer's special tokens (``[CLS] ... [SEP]`` for BERT's
  WordPiece, ``<s> ... </s>`` for SentencePiece models) and is pooled at the first token;
- a decoder's text is its plain ids, pooled at the last real token (the model's rule).

Words of a tagging record are encoded one by one (each but the first after a space, as in the
joined sentence); a word's tag is predicted at its first piece, where ``loss_mask`` is 1 (the
first piece that holds a character of the word: small SentencePiece vocabularies often make the
space before a word a piece of its own). Words
that do not fit the row are not trained on (and are predicted ``O`` in evaluation).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter

import numpy as np

from llmzoo.config import TrainConfig
from llmzoo.data.labeled import check_known, label_names, load_records
from llmzoo.objectives.task_metrics import entity_report

TASK_OF = {"sequence_classification": "classification", "token_classification": "tagging"}
LABELS_FILE = "labels.json"


@functools.lru_cache(maxsize=8)
def _train_names(data, split: str, task: str) -> tuple[str, ...]:
    return tuple(label_names(load_records(data, split, task), task))


def train_label_names(cfg: TrainConfig) -> list[str]:
    """The label map of ``cfg``'s train split (for ``cfg.objective.name``)."""
    return list(_train_names(cfg.data, cfg.data.train_split, TASK_OF[cfg.objective.name]))


def fit_head(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the model's head and ``num_labels`` set from the train split's label map
    (an encoder's sequence head also gets its pooler).

    Raises:
        DataError: a record of either split is malformed, or the eval split has a label that
            the train split lacks.
    """
    head, d = cfg.objective.name, cfg.data
    if cfg.model.kind not in ("encoder", "decoder"):
        return cfg  # the objective's kind check names the problem
    names = train_label_names(cfg)
    where = f"{d.dataset!r} split {d.eval_split!r}"  # an unseen label fails now, before any work
    check_known(load_records(d, d.eval_split, TASK_OF[head]), names, where)
    changes = {"head": head, "num_labels": len(names)}
    if cfg.model.kind == "encoder" and head == "sequence_classification":
        changes["pooler"] = True
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text with ``add_special_tokens``."""
    plain = tokenizer.encode("a")
    full = tokenizer.encode("a", add_special_tokens=True)
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return full[:k], full[k + len(plain) :]
    return [], []


class _RowExamples:
    """What both tasks share: the label map, the row layout and the records hooks."""

    records = True
    pack = False
    task = ""

    def __init__(self, cfg: TrainConfig, tokenizer, names: list[str]):
        self.row_len = cfg.seq_len
        self.data = cfg.data
        self.tokenizer = tokenizer
        self.names = list(names)
        self.ids = {name: i for i, name in enumerate(self.names)}
        specials = cfg.model.kind == "encoder"
        self.prefix, self.suffix = special_tokens(tokenizer) if specials else ([], [])

    def load(self, data, split: str) -> list[dict]:
        """The records of ``split``, each label checked against the label map."""
        records = load_records(data, split, self.task)
        check_known(records, self.names, f"{data.dataset!r} split {split!r}")
        return records

    def run_files(self) -> dict[str, str]:
        """``labels.json``: the task and its label names, by id."""
        return {LABELS_FILE: json.dumps({"task": self.task, "labels": self.names}, indent=1)}

    def _row(self, ids: list[int]) -> dict[str, np.ndarray]:
        n = len(ids)
        return {
            "tokens": np.pad(np.asarray(ids, np.int32), (0, self.row_len - n)),
            "segment_ids": (np.arange(self.row_len) < n).astype(np.int32),
        }

    def _eval_records(self, eval_batches) -> list[dict]:
        """The validation records that the (padded) validation batches hold, in order."""
        n = int(sum(np.asarray(b["example_mask"]).sum() for b in eval_batches))
        return self.load(self.data, self.data.eval_split)[:n]


class SequenceExamples(_RowExamples):
    """``{'tokens', 'segment_ids' [T], 'labels' [], 'example_mask' []}`` per text."""

    task = "classification"

    def encode(self, text: str) -> list[int]:
        """The row's ids: specials around the text's ids, truncated to keep the suffix."""
        room = self.row_len - len(self.prefix) - len(self.suffix)
        return self.prefix + self.tokenizer.encode(text)[: max(room, 0)] + self.suffix

    def __call__(self, record: dict) -> dict[str, np.ndarray]:
        row = self._row(self.encode(record["text"]))
        row["labels"] = np.asarray(self.ids[record["label"]], np.int32)
        row["example_mask"] = np.asarray(1.0, np.float32)
        return row

    def baselines(self, eval_batches) -> dict:
        """``majority_class_accuracy``: always predicting the train split's most frequent label."""
        train = load_records(self.data, self.data.train_split, self.task)
        majority = Counter(r["label"] for r in train).most_common(1)[0][0]
        labels = [r["label"] for r in self._eval_records(eval_batches)]
        hits = sum(label == majority for label in labels)
        return {"majority_class_accuracy": hits / max(len(labels), 1)}


class TaggingExamples(_RowExamples):
    """``{'tokens', 'segment_ids', 'labels', 'loss_mask' [T], 'example_mask' []}`` per
    sentence: ``labels`` holds each word's tag id at its first piece."""

    task = "tagging"

    def _first_visible(self, pieces: list[int]) -> int:
        """The index of the first piece that holds a character of the word (a lone space piece,
        as small SentencePiece vocabularies make, carries none), else 0."""
        visible = (k for k, p in enumerate(pieces) if self.tokenizer.decode([p]).strip())
        return next(visible, 0)

    def align(self, words: list[str]) -> tuple[list[int], list[int]]:
        """The row's ids and the position of each word's first piece (its first piece that is
        not a lone space) for the words that fit, in order."""
        ids, starts = list(self.prefix), []
        room = self.row_len - len(self.suffix)
        for i, word in enumerate(words):
            pieces = self.tokenizer.encode(word if i == 0 else " " + word)
            if not pieces or len(ids) + len(pieces) > room:
                break
            starts.append(len(ids) + self._first_visible(pieces))
            ids += pieces
        return ids + self.suffix, starts

    def __call__(self, record: dict) -> dict[str, np.ndarray]:
        ids, starts = self.align(record["tokens"])
        row = self._row(ids)
        labels, mask = np.zeros(self.row_len, np.int32), np.zeros(self.row_len, np.float32)
        labels[starts] = [self.ids[t] for t in record["tags"][: len(starts)]]
        mask[starts] = 1.0
        return row | {"labels": labels, "loss_mask": mask, "example_mask": np.float32(1.0)}

    def baselines(self, eval_batches) -> dict:
        """``most_frequent_tag_f1``: the entity-level micro F1 of tagging each word with its most
        frequent tag in the train split (``O`` for unseen words)."""
        counts: dict[str, Counter] = {}
        for r in load_records(self.data, self.data.train_split, self.task):
            for word, tag in zip(r["tokens"], r["tags"], strict=True):
                counts.setdefault(word, Counter())[tag] += 1
        best = {w: c.most_common(1)[0][0] for w, c in counts.items()}
        records = self._eval_records(eval_batches)
        pred = [[best.get(w, "O") for w in r["tokens"]] for r in records]
        report = entity_report([r["tags"] for r in records], pred)
        return {"most_frequent_tag_f1": report["micro"]["f1"]}


def make_task_examples(cfg: TrainConfig, tokenizer, names: list[str] | None = None):
    """The examples of ``cfg.objective`` (a classification objective) with label map ``names``
    (default: the train split's)."""
    names = train_label_names(cfg) if names is None else names
    cls = SequenceExamples if cfg.objective.name == "sequence_classification" else TaggingExamples
    return cls(cfg, tokenizer, names)
