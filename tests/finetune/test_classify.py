"""Sequence classification: demo task labels, example rows, bad input, and a fine-tuned decoder
that beats the majority class (its report read back through labels.json and `llmzoo eval`)."""

import json
import os
import zlib
from collections import Counter

import numpy as np
import pytest

from llmzoo.cli import main
from llmzoo.config import DataConfig
from llmzoo.data.demo_tasks import TOPIC_CLASSES, demo_records
from llmzoo.data.labeled import load_records
from llmzoo.errors import DataError
from llmzoo.eval_tasks import read_labels, task_report
from llmzoo.objectives.classify import SequenceExamples
from llmzoo.presets import resolve_train_config
from llmzoo.train.loop import train


class CharTokenizer:
    """One id per character (``ord(c) - 90``); specials bos 2 and eos 3 when asked."""

    def encode(self, text, add_special_tokens=False):
        ids = [ord(c) - 90 for c in text]
        return [2, *ids, 3] if add_special_tokens else ids

    def decode(self, ids):
        return "".join(chr(i + 90) for i in ids)


def test_topic_classes_are_exact_and_split_by_hash():
    train, val = (
        demo_records("pydoc_topic_classes", "train"),
        demo_records("pydoc_topic_classes", "validation"),
    )
    class_of = {topic: label for label, topics in TOPIC_CLASSES.items() for topic in topics}
    for r in train + val:
        assert r["label"] == class_of[r["id"].split("/")[0]]
        assert (zlib.crc32(r["id"].encode()) % 5 == 0) == (r in val)
    assert sorted({r["label"] for r in train}) == sorted(TOPIC_CLASSES)
    assert 0.15 < len(val) / (len(train) + len(val)) < 0.25
    first_for = [r for r in train + val if r["id"] == "for/001"][0]
    assert first_for["text"].startswith('The "for" statement is used to iterate')


def test_sequence_rows_for_encoder_and_decoder(tmp_path):
    cfg = resolve_train_config(overrides=["seq_len=8", "model.preset=bert-tiny"])
    enc = SequenceExamples(cfg, CharTokenizer(), ["neg", "pos"])
    row = enc({"text": "abcdefghij", "label": "pos"})
    # [bos] + the first 6 characters + [eos]: truncation keeps the closing special token.
    np.testing.assert_array_equal(row["tokens"], [2, 7, 8, 9, 10, 11, 12, 3])
    assert int(row["labels"]) == 1 and float(row["example_mask"]) == 1.0
    dec = SequenceExamples(resolve_train_config(overrides=["seq_len=8"]), CharTokenizer(), ["a"])
    row = dec({"text": "abc", "label": "a"})
    np.testing.assert_array_equal(row["tokens"], [7, 8, 9, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 0, 0, 0, 0, 0])


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_label_outside_the_train_labels_is_one_line_exit_2(tmp_path, capsys):
    data = tmp_path / "reviews"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", [{"text": "good", "label": "pos"},
                                        {"text": "bad", "label": "neg"}])  # fmt: skip
    _write_jsonl(data / "validation.jsonl", [{"text": "meh", "label": "neutral"}])
    args = ["train", "objective.name=sequence_classification", f"data.dataset={data}",
            f"run_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: label 'neutral' of record 0 of ")
    assert "(neg, pos)" in err[0] and not (tmp_path / "run").exists()


def test_missing_label_and_config_without_init_from(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.csv").write_text("text,label\ngood,pos\nbad,\n")
    with pytest.raises(DataError, match=r"record 1 of .* has no 'label'; .*data\.label_key"):
        load_records(DataConfig(dataset=str(tmp_path / "d")), "train", "classification")
    args = ["train", "--config", "configs/classify-tiny.yaml", f"run_dir={tmp_path / 'r'}",
            f"data.data_dir={tmp_path}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set init_from=RUN" in err[0]


@pytest.mark.slow
def test_decoder_beats_the_majority_class(pretrained_decoder, finetune_data_dir, tmp_path, capsys):
    run = str(tmp_path / "cls")
    args = [f"init_from={pretrained_decoder}", f"run_dir={run}",
            f"data.data_dir={finetune_data_dir}",
            "objective.name=sequence_classification", "data.dataset=pydoc_topic_classes",
            "steps=80", "seq_len=64", "batch_size=16", "eval_batches=100", "eval_every=1000",
            "optim.lr=2e-3", "optim.warmup_steps=10"]  # fmt: skip
    summary = train(resolve_train_config(overrides=args), progress=False, log=lambda *a: None)
    print(summary)
    assert summary["val_accuracy"] > summary["majority_class_accuracy"] + 0.1
    train_labels = [r["label"] for r in demo_records("pydoc_topic_classes", "train")]
    val_labels = [r["label"] for r in demo_records("pydoc_topic_classes", "validation")]
    majority = Counter(train_labels).most_common(1)[0][0]
    want = val_labels.count(majority) / len(val_labels)
    assert summary["majority_class_accuracy"] == pytest.approx(want)
    names = sorted(TOPIC_CLASSES)
    assert read_labels(run) == names
    # The report (labels.json's names) scores the whole validation split as training did.
    report = task_report(run)
    assert report["labels"] == names and report["examples"] == len(val_labels)
    assert report["accuracy"] == pytest.approx(summary["val_accuracy"], abs=1e-6)
    assert np.trace(report["confusion_matrix"]) == round(len(val_labels) * report["accuracy"])
    # Reversing labels.json's order re-maps every gold label: the matrix's rows reverse.
    with open(os.path.join(run, "labels.json"), "w") as f:
        json.dump({"task": "classification", "labels": names[::-1]}, f)
    capsys.readouterr()
    assert main(["eval", "--run", run]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    printed = json.loads(out[-1])
    assert printed["labels"] == names[::-1]
    assert printed["confusion_matrix"] == report["confusion_matrix"][::-1]
    assert "confusion matrix (rows: true, columns: predicted):" in out
