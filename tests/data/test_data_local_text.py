"""Your own text as a dataset: .txt and .jsonl files, folders and globs (llmzoo.data.local_text)."""

import json
import os
import zlib

import pytest

from llmzoo.config import DataConfig
from llmzoo.data import build_source, iter_texts, source_for
from llmzoo.data.local_text import is_local, local_files
from llmzoo.errors import DataError

PARAGRAPHS = [f"Paragraph {i} says {'word ' * (i % 7)}and ends." for i in range(40)]


@pytest.fixture
def corpus(tmp_path):
    """A folder of 8 .txt files, 5 paragraphs each, two of them in a subfolder, plus noise."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for i in range(8):
        folder = root / "sub" if i >= 6 else root
        text = "\n\n".join(PARAGRAPHS[5 * i : 5 * i + 5]) + "\n"
        (folder / f"doc{i}.txt").write_text(text, encoding="utf-8")
    (root / "README.md").write_text("not text data")
    return root


def _all(name, data_dir, **kw):
    return {
        split: list(build_source(str(name), split, data_dir=str(data_dir), **kw))
        for split in ("train", "validation")
    }


def test_which_names_are_local(corpus):
    assert is_local(str(corpus)) and is_local("a/*.txt") and is_local("x.jsonl")
    assert not is_local("lm1b") and not is_local("glue/sst2")


def test_folder_glob_and_file_find_the_same_files(corpus):
    everything = local_files(str(corpus))
    assert [os.path.basename(f) for f in everything] == [f"doc{i}.txt" for i in range(8)]
    assert local_files(str(corpus / "**" / "*.txt")) == everything
    assert local_files(str(corpus / "*.txt")) == everything[:6]
    assert local_files(str(corpus / "doc3.txt")) == [str(corpus / "doc3.txt")]


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("nothing/*.txt", "no .txt or .jsonl files match data.dataset="),
        ("missing.txt", "no .txt or .jsonl files match data.dataset="),
        ("corpus/*", "which is neither .txt nor .jsonl"),
    ],
)
def test_bad_patterns(corpus, pattern, message):
    with pytest.raises(DataError, match=message):
        local_files(str(corpus.parent / pattern))


def test_split_partitions_the_documents_by_their_hash(corpus, tmp_path):
    per_file = _all(corpus, tmp_path / "a")
    assert len(per_file["train"]) + len(per_file["validation"]) == 8
    assert sorted(per_file["train"] + per_file["validation"]) == sorted(
        p.read_text() for p in corpus.rglob("*.txt")
    )
    paragraphs = _all(corpus, tmp_path / "b", txt_documents="paragraph")
    assert sorted(paragraphs["train"] + paragraphs["validation"]) == sorted(PARAGRAPHS)
    # The rule: crc32(id) / 2**32 < eval_fraction, with id "<relative path>:<index>".
    held_out = sorted(
        PARAGRAPHS[5 * i + j]
        for i in range(8)
        for j in range(5)
        if zlib.crc32(f"{'sub/' if i >= 6 else ''}doc{i}.txt:{j}".encode()) / 2**32 < 0.1
    )
    assert held_out and sorted(paragraphs["validation"]) == held_out


def test_split_is_stable_when_files_are_added(corpus, tmp_path):
    before = _all(corpus, tmp_path / "a", txt_documents="paragraph", eval_fraction=0.3)
    (corpus / "new.txt").write_text("A new paragraph.\n\nAnd another one.\n")
    after = _all(corpus, tmp_path / "a", txt_documents="paragraph", eval_fraction=0.3)
    assert set(before["validation"]) <= set(after["validation"])
    assert set(before["train"]) <= set(after["train"])
    assert len(after["train"]) + len(after["validation"]) == len(PARAGRAPHS) + 2


def test_edited_files_are_prepared_again(corpus, tmp_path):
    data = DataConfig(dataset=str(corpus), data_dir=str(tmp_path / "d"), eval_fraction=0.5)
    first = list(source_for(data, "train")) + list(source_for(data, "validation"))
    (corpus / "doc0.txt").write_text("Rewritten.\n")
    second = list(source_for(data, "train")) + list(source_for(data, "validation"))
    assert "Rewritten.\n" in second and "Rewritten.\n" not in first


def test_every_split_gets_a_document(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "a.txt").write_text("first")
    (folder / "b.txt").write_text("second")
    for fraction in (0.01, 0.99):
        got = _all(folder, tmp_path / str(fraction), eval_fraction=fraction)
        assert len(got["train"]) == len(got["validation"]) == 1


def test_one_document_is_an_error(tmp_path):
    (tmp_path / "one.txt").write_text("only one\n")
    with pytest.raises(DataError, match="holds 1 document.*txt_documents=paragraph"):
        build_source(str(tmp_path / "one.txt"), "train", data_dir=str(tmp_path / "d"))


def test_jsonl_reads_the_text_key(tmp_path):
    path = tmp_path / "docs.jsonl"
    records = [{"id": i, "body": f"document number {i}"} for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    data = DataConfig(dataset=str(path), text_key="body", data_dir=str(tmp_path / "d"))
    texts = list(iter_texts(data, "train")) + list(iter_texts(data, "validation"))
    assert sorted(texts) == sorted(r["body"] for r in records)


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "ok"}', "{not json"], r"docs.jsonl:2: not a JSON object"),
        (['{"body": "x"}'], r"docs.jsonl:1: no field 'text'; set data.text_key .*\['body'\]"),
        (['{"text": 3}'], r"docs.jsonl:1: field 'text' is not a string \(int\)"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path, lines, message):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        build_source(str(path), "train", data_dir=str(tmp_path / "d"))


def test_non_utf8_text_is_named(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"fine")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe latin-1?")
    with pytest.raises(DataError, match="b.txt' is not UTF-8 text"):
        build_source(str(tmp_path), "train", data_dir=str(tmp_path / "d"))


def test_default_tokenizer_path_is_per_dataset(tmp_path):
    pydoc = DataConfig(data_dir="cache")
    assert pydoc.tokenizer_path == os.path.join("cache", "pydoc_topics_sp2048.model")
    mine = DataConfig(dataset="my_texts/**/*.txt", data_dir="cache")
    other = DataConfig(dataset="other/**/*.txt", data_dir="cache")
    assert mine.tokenizer_path.startswith(os.path.join("cache", "my_texts_txt_"))
    assert mine.tokenizer_path != other.tokenizer_path
    assert DataConfig(tokenizer="t.model").tokenizer_path == "t.model"
    unigram = DataConfig(tokenizer_type="unigram", vocab_size=512, data_dir="c")
    assert unigram.tokenizer_path == os.path.join("c", "pydoc_topics_sp512_unigram.model")
