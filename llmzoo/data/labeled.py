"""Labeled records for task fine-tuning: text classification and BIO token tagging (NER).

``data.dataset`` names one of:

- a demo task built offline from Python's docs: ``pydoc_topic_classes`` or ``pydoc_code_tags``
  (see :mod:`llmzoo.data.demo_tasks`);
- a folder holding one file per split, ``<split>.jsonl``, ``<split>.csv`` or ``<split>.tsv``
  (``train.jsonl``, ``validation.jsonl`` ...), or a single such file whose records are split by
  a stable hash of their index (``data.eval_fraction`` of them are ``validation``);
- a TFDS dataset by name, already prepared in ``data.data_dir`` (``glue/sst2``: ``sentence`` and
  ``label``; ``conll2003``: ``tokens`` and ``ner``, read as array_record, no TensorFlow).

Classification records are ``{'text': str, 'label': str}``: JSONL keys ``data.text_key`` and
``data.label_key``, CSV/TSV columns of those names (a header row is required). Tagging records
are ``{'tokens': [str], 'tags': [str]}``: JSONL keys ``data.tokens_key`` and ``data.tags_key``,
or CoNLL-style ``.tsv``/``.conll`` files (one word a line, the word first and its tag last,
sentences separated by blank lines).
"""

from __future__ import annotations

import csv
import json
import os
import zlib

from llmzoo.config import DataConfig
from llmzoo.data.demo_tasks import DEMO_TASKS, demo_records
from llmzoo.errors import DataError

TASKS = ("classification", "tagging")
SUFFIXES = (".jsonl", ".csv", ".tsv", ".conll")
# TFDS datasets whose feature names differ from the defaults: name -> (text or tokens, label).
TFDS_KEYS = {"glue/sst2": ("sentence", "label"), "conll2003": ("tokens", "ner")}


def _fields(task: str) -> tuple[str, str]:
    """The names of the data config's two key fields for ``task``."""
    return ("text_key", "label_key") if task == "classification" else ("tokens_key", "tags_key")


def _keys(data: DataConfig, task: str) -> tuple[str, str]:
    if task == "classification":
        return data.text_key, data.label_key
    return data.tokens_key, data.tags_key


def _split_file(dataset: str, split: str) -> str:
    """The file of ``split`` in a folder dataset."""
    for suffix in SUFFIXES:
        path = os.path.join(dataset, split + suffix)
        if os.path.isfile(path):
            return path
    raise DataError(
        f"no {split}.jsonl, {split}.csv, {split}.tsv or {split}.conll in data.dataset="
        f"{dataset!r}; add that split's file (or set data.train_split/data.eval_split)"
    )


def _read_conll(path: str) -> list[dict]:
    records, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate([*f, "\n"], 1):
            cols = line.split()
            if not cols or cols[0] == "-DOCSTART-":
                if words:
                    records.append({"tokens": words, "tags": tags})
                words, tags = [], []
            elif len(cols) < 2:
                raise DataError(f"{path}:{number}: {line.strip()!r} has no tag; write 'WORD TAG'")
            else:
                words, tags = words + [cols[0]], tags + [cols[-1]]
    return records


def _read_file(path: str, task: str) -> list[dict]:
    """The raw records (dicts) of a ``.jsonl``, ``.csv``, ``.tsv`` or ``.conll`` file."""
    try:
        if path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if path.endswith(".conll") or (path.endswith(".tsv") and task == "tagging"):
            return _read_conll(path)
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ","))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot parse {path!r} ({e}); fix the file") from None


def _tfds_records(data: DataConfig, split: str, task: str) -> list[dict]:
    """A prepared TFDS dataset's split as plain records (ClassLabel ids become names)."""
    import tensorflow_datasets as tfds

    name = data.dataset
    text_key, label_key = TFDS_KEYS.get(name, _keys(data, task))
    try:
        builder = tfds.builder(name, data_dir=data.data_dir, file_format="array_record")
        prepared = builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        prepared = False
    if not prepared:
        raise DataError(
            f"dataset {name!r} is not a demo task ({', '.join(DEMO_TASKS)}), a folder of split "
            f"files or a .jsonl/.csv/.tsv file, and no prepared TFDS dataset of that name is in "
            f"data.data_dir={data.data_dir!r}; on a machine with network access (and TensorFlow) "
            f"run `llmzoo data build --dataset {name} --text-key {text_key} --data-dir DIR`, copy "
            "DIR here and set data.data_dir=DIR"
        )
    features = builder.info.features
    for key, field in zip((text_key, label_key), _fields(task), strict=True):
        if key not in features:
            raise DataError(
                f"dataset {name!r} has no feature {key!r}; set data.{field} to one of "
                f"{sorted(features)}"
            )
    feature = features[label_key]
    names = getattr(getattr(feature, "feature", feature), "names", None)
    out = []
    for rec in builder.as_data_source(split):
        labels = rec[label_key]
        labels = [names[i] for i in labels] if names and task == "tagging" else labels
        labels = names[labels] if names and task == "classification" else labels
        out.append({text_key: rec[text_key], label_key: labels})
    return out


def _raw_records(data: DataConfig, split: str, task: str) -> list[dict]:
    name = data.dataset
    if name in DEMO_TASKS:
        return demo_records(name, split)
    if os.path.isdir(name):
        return _read_file(_split_file(name, split), task)
    if name.endswith(SUFFIXES):
        if not os.path.isfile(name):
            raise DataError(f"data.dataset={name!r} not found; check the path")
        if split not in ("train", "validation"):
            raise DataError(f"a single file has splits train and validation, not {split!r}")
        buckets = round(data.eval_fraction * 1000)
        held = lambda i: zlib.crc32(f"{name}:{i}".encode()) % 1000 < buckets  # noqa: E731
        rows = _read_file(name, task)
        return [r for i, r in enumerate(rows) if held(i) == (split == "validation")]
    return _tfds_records(data, split, task)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _normalise(raw: dict, index: int, where: str, keys: tuple[str, str], task: str) -> dict:
    """``raw`` as ``{'text', 'label'}`` or ``{'tokens', 'tags'}``; one-line errors name it."""
    x_key, y_key = keys
    missing = [k for k in keys if k not in raw or raw[k] is None or raw[k] == ""]
    if missing:
        field = _fields(task)[keys.index(missing[0])]
        raise DataError(
            f"record {index} of {where} has no {missing[0]!r}; fix the record or set "
            f"data.{field} (its keys: {sorted(raw)})"
        )
    if task == "classification":
        return {"text": _text(raw[x_key]), "label": _text(raw[y_key])}
    words, tags = [_text(w) for w in raw[x_key]], [_text(t) for t in raw[y_key]]
    if len(words) != len(tags):
        raise DataError(
            f"record {index} of {where} has {len(words)} tokens but {len(tags)} tags; give one "
            "tag per token"
        )
    return {"tokens": words, "tags": tags}


def load_records(data: DataConfig, split: str, task: str) -> list[dict]:
    """The checked records of one split of ``data.dataset``.

    Args:
        data: the data config (``dataset``, the key fields, ``data_dir``, ``eval_fraction``).
        split: a split name such as ``train`` or ``validation``.
        task: ``classification`` (``{'text', 'label'}`` records) or ``tagging`` (``{'tokens',
            'tags'}``).

    Raises:
        DataError: the dataset or split is missing, or a record lacks a field or has a
            different number of tokens and tags (one line naming the record and the fix).
    """
    keys = _keys(data, task)
    if data.dataset in DEMO_TASKS:
        keys = ("text", "label") if task == "classification" else ("tokens", "tags")
    elif data.dataset in TFDS_KEYS:
        keys = TFDS_KEYS[data.dataset]
    where = f"{data.dataset!r} split {split!r}"
    raw = _raw_records(data, split, task)
    return [_normalise(r, i, where, keys, task) for i, r in enumerate(raw)]


def _bio(tag: str) -> tuple[str, str]:
    """``'B-PER'`` -> ``('B', 'PER')``; ``'O'`` -> ``('O', '')``."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[:2] in ("B-", "I-"):
        return tag[0], tag[2:]
    raise DataError(f"tag {tag!r} is not BIO; use O, B-TYPE or I-TYPE")


def label_names(records: list[dict], task: str) -> list[str]:
    """The label map of a train split: its sorted unique labels (classification), or ``O`` then
    ``B-T``, ``I-T`` for each entity type T, sorted (tagging)."""
    if task == "classification":
        return sorted({r["label"] for r in records})
    types = sorted({_bio(t)[1] for r in records for t in r["tags"]} - {""})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def check_known(records: list[dict], names: list[str], where: str) -> None:
    """Raises a one-line DataError for the first label (or tag) not in ``names``."""
    known = set(names)
    for i, r in enumerate(records):
        for label in r["tags"] if "tags" in r else [r["label"]]:
            if label not in known:
                raise DataError(
                    f"label {label!r} of record {i} of {where} is not in the train split's "
                    f"labels ({', '.join(names)}); fix the record or add it to the train split"
                )
