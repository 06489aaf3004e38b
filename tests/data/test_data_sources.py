"""The pydoc_topics TFDS builder and build_source / iter_texts."""

import collections
import importlib.util
import sys

import pytest
import tensorflow_datasets as tfds

from llmzoo.config import DataConfig
from llmzoo.data import build_source, iter_texts, pydoc_documents
from llmzoo.data.pydoc_corpus import split_of
from llmzoo.errors import DataError


def test_documents_cover_every_topic_exactly():
    from pydoc_data.topics import topics

    docs = pydoc_documents()
    assert 150 < len(docs) < 400
    rebuilt = collections.defaultdict(str)
    for doc_id, text in docs.items():  # Ids are "<topic>/<index>", in order within a topic.
        rebuilt[doc_id.rsplit("/", 1)[0]] += text
    assert dict(rebuilt) == topics


def test_split_is_disjoint_complete_and_stable(data_dir):
    train = list(build_source("pydoc_topics", "train", data_dir=data_dir))
    valid = list(build_source("pydoc_topics", "validation", data_dir=data_dir))
    docs = pydoc_documents()
    expected_valid = [text for doc_id, text in docs.items() if split_of(doc_id) == "validation"]
    assert collections.Counter(valid) == collections.Counter(expected_valid)
    assert collections.Counter(train + valid) == collections.Counter(docs.values())
    assert 0.05 < len(valid) / len(docs) < 0.15
    assert split_of("try/000") == split_of("try/000")  # crc32: same in every process.
    assert all(isinstance(text, str) for text in train)


def test_tfds_data_source_reads_array_record(data_dir):
    records = tfds.data_source("pydoc_topics", split="validation", data_dir=data_dir)
    assert isinstance(records[0]["text"], bytes)
    assert len(records) == len(build_source("pydoc_topics", "validation", data_dir=data_dir))


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="checks the TensorFlow-free path"
)
def test_builds_and_reads_without_tensorflow(tmp_path):
    source = build_source("pydoc_topics", "validation", data_dir=str(tmp_path))
    assert len(source) > 0 and isinstance(source[0], str)
    assert "tensorflow" not in sys.modules


def test_iter_texts_limit(data_dir):
    texts = list(iter_texts(DataConfig(data_dir=data_dir), "train", limit=3))
    assert texts == [build_source("pydoc_topics", "train", data_dir=data_dir)[i] for i in range(3)]


def test_unknown_dataset_is_a_one_line_data_error(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'no_such_corpus'") as info:
        build_source("no_such_corpus", "train", data_dir=str(tmp_path))
    assert "\n" not in str(info.value)


def test_unknown_split_and_missing_key_are_data_errors(data_dir):
    with pytest.raises(DataError, match="split 'test'"):
        build_source("pydoc_topics", "test", data_dir=data_dir)
    with pytest.raises(DataError, match="no field 'content'.*text_key"):
        build_source("pydoc_topics", "train", data_dir=data_dir, text_key="content")
