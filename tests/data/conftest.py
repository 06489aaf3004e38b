"""Shared fixtures for the data tests: one pydoc_topics build and one tokenizer per session."""

import pytest

from llmzoo.config import DataConfig
from llmzoo.data import Tokenizer, build_source, iter_texts, train_tokenizer


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tfds"))
    build_source("pydoc_topics", "train", data_dir=path)  # Builds both splits.
    return path


@pytest.fixture(scope="session")
def tokenizer(data_dir, tmp_path_factory) -> Tokenizer:
    prefix = tmp_path_factory.mktemp("tok") / "pydoc_bpe"
    return train_tokenizer(
        iter_texts(DataConfig(data_dir=data_dir), "train"), prefix, vocab_size=1024
    )


class CharTokenizer:
    """A hand-checkable stand-in for Tokenizer: 'a' -> 10, 'b' -> 11, ...; eos = 3."""

    eos_id = 3
    pad_id = 0
    path = "<chars>"
    vocab_size = 64

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") + 10 for c in text]


@pytest.fixture
def char_tokenizer() -> CharTokenizer:
    return CharTokenizer()
