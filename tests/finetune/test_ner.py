"""Token classification (NER): exact demo tags, word-to-piece alignment, bad input, and a
fine-tuned encoder that beats the most-frequent-tag baseline in entity F1."""

import json
from collections import Counter

import numpy as np
import pytest

from llmzoo.config import DataConfig
from llmzoo.data.demo_tasks import demo_records, tag_code
from llmzoo.data.labeled import label_names, load_records
from llmzoo.errors import DataError
from llmzoo.eval_tasks import task_report
from llmzoo.objectives.classify import TaggingExamples
from llmzoo.presets import resolve_train_config
from llmzoo.train.loop import train


def test_code_tags_are_exact():
    code = (
        'def area(r):\n    return 3.14 * r ** 2 if r is not None else abs(x.len)\nprint("a" "b")\n'
    )
    (line1, line2, line3) = tag_code(code)
    assert line1 == [("def", "B-KW"), ("area", "B-DEF"), ("(", "O"), ("r", "O"), (")", "O"),
                     (":", "O")]  # fmt: skip
    # return 3.14 * r ** 2 if r is not None else abs ( x . len ): x.len is an attribute
    got = " ".join(t for _, t in line2)
    assert got == "B-KW B-LIT O O O B-LIT B-KW O B-KW B-KW B-LIT B-KW B-BUILTIN O O O O O"
    assert line3 == [("print", "B-BUILTIN"), ("(", "O"), ('"a"', "B-LIT"), ('"b"', "I-LIT"),
                     (")", "O")]  # fmt: skip
    records = demo_records("pydoc_code_tags", "train")
    assert label_names(records, "tagging") == ["O", "B-BUILTIN", "I-BUILTIN", "B-DEF", "I-DEF",
                                               "B-KW", "I-KW", "B-LIT", "I-LIT"]  # fmt: skip
    assert all(len(r["tokens"]) == len(r["tags"]) for r in records)


class SpaceTokenizer:
    """A leading space is a piece of its own (id 4), then one id per character."""

    def encode(self, text, add_special_tokens=False):
        ids = [4 if c == " " else ord(c) - 90 for c in text]
        return [2, *ids, 3] if add_special_tokens else ids

    def decode(self, ids):
        return "".join(" " if i == 4 else chr(i + 90) for i in ids)


def test_tag_on_the_first_visible_piece_of_each_word():
    cfg = resolve_train_config(overrides=["seq_len=10", "model.preset=bert-tiny",
                                          "objective.name=token_classification"])  # fmt: skip
    ex = TaggingExamples(cfg, SpaceTokenizer(), ["O", "B-X", "I-X"])
    row = ex({"tokens": ["ab", "c", "de", "fgh"], "tags": ["B-X", "O", "I-X", "B-X"]})
    # [bos] a b ' ' c ' ' d e [eos]: 'fgh' does not fit and is not trained on.
    np.testing.assert_array_equal(row["tokens"], [2, 7, 8, 4, 9, 4, 10, 11, 3, 0])
    np.testing.assert_array_equal(row["loss_mask"], [0, 1, 0, 0, 1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(row["labels"], [0, 1, 0, 0, 0, 0, 2, 0, 0, 0])
    np.testing.assert_array_equal(row["segment_ids"], [1] * 9 + [0])


def test_bad_tagging_input_is_one_line(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}))
    data = DataConfig(dataset=str(tmp_path))
    with pytest.raises(DataError, match=r"^record 0 of .* has 2 tokens but 1 tags; give one tag"):
        load_records(data, "train", "tagging")
    (tmp_path / "train.conll").write_text("John B-PER\nlives O\n\nParis B-LOC\n")
    (tmp_path / "train.jsonl").unlink()
    assert load_records(data, "train", "tagging") == [
        {"tokens": ["John", "lives"], "tags": ["B-PER", "O"]},
        {"tokens": ["Paris"], "tags": ["B-LOC"]},
    ]
    with pytest.raises(DataError, match=r"'conll2003' is not a demo task.*no prepared TFDS"):
        load_records(DataConfig(dataset="conll2003", data_dir=str(tmp_path)), "train", "tagging")


def _lookup_f1() -> float:
    """seqeval's micro F1 of tagging each validation word with its most frequent train tag."""
    from seqeval.metrics import f1_score

    counts = {}
    for r in demo_records("pydoc_code_tags", "train"):
        for word, tag in zip(r["tokens"], r["tags"], strict=True):
            counts.setdefault(word, Counter())[tag] += 1
    val = demo_records("pydoc_code_tags", "validation")
    pred = [[counts[w].most_common(1)[0][0] if w in counts else "O" for w in r["tokens"]]
            for r in val]  # fmt: skip
    return f1_score([r["tags"] for r in val], pred)


@pytest.mark.slow
def test_encoder_beats_the_most_frequent_tag(pretrained_encoder, finetune_data_dir, tmp_path):
    run = str(tmp_path / "ner")
    args = [f"init_from={pretrained_encoder}", f"run_dir={run}",
            f"data.data_dir={finetune_data_dir}", "objective.name=token_classification",
            "data.dataset=pydoc_code_tags", "steps=400", "seq_len=64", "batch_size=16",
            "eval_batches=100", "eval_every=1000", "optim.lr=5e-3",
            "optim.warmup_steps=10"]  # fmt: skip
    summary = train(resolve_train_config(overrides=args), progress=False, log=lambda *a: None)
    report = task_report(run)
    print(summary, report["micro"])
    baseline = summary["most_frequent_tag_f1"]
    assert baseline == pytest.approx(_lookup_f1(), abs=1e-12)
    assert 0.8 < baseline < 0.9  # unseen literals and defined names defeat a lookup table
    assert report["entity_f1"] > baseline
