"""SentencePiece training and loading: exact round trips, determinism, errors."""

import pickle

import pytest

from llmzoo.config import DataConfig
from llmzoo.data import Tokenizer, iter_texts, train_tokenizer
from llmzoo.errors import DataError

TRICKY = [
    "",
    " ",
    "  leading spaces",
    "trailing spaces   ",
    "multiple    spaces  between",
    "\ttabs\t\tand\t",
    "line one\nline two\n\n\nafter blank lines\n",
    "windows\r\nline ends\r\n",
    "\n",
    "emoji 😀🎉 and 👩‍👩‍👧",
    "中文漢字かなカナ한국어",
    "digits 1234567890 3.14159",
    "control \x00\x01\x7f chars",
    "def f(x):\n    return x ** 2  # comment\n",
]


def test_round_trip_is_exact(tokenizer, data_dir):
    for text in TRICKY + list(iter_texts(DataConfig(data_dir=data_dir), "validation")):
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_ids_and_vocab(tokenizer):
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert tokenizer.vocab_size == 1024
    assert tokenizer.decode([tokenizer.bos_id, *tokenizer.encode("hi"), tokenizer.eos_id]) == "hi"
    assert tokenizer.unk_id not in tokenizer.encode("rare ☃ 𝄞")  # Bytes, not <unk>.


def test_training_is_deterministic(tmp_path, data_dir):
    texts = list(iter_texts(DataConfig(data_dir=data_dir), "train", limit=40))
    for model_type in ("bpe", "unigram"):
        # Same prefix both times: the model file records its own prefix.
        prefix = tmp_path / model_type
        a = train_tokenizer(texts, prefix, vocab_size=512, model_type=model_type)
        first = open(a.path, "rb").read()
        train_tokenizer(texts, prefix, vocab_size=512, model_type=model_type)
        assert open(a.path, "rb").read() == first
        assert a.decode(a.encode(TRICKY[6])) == TRICKY[6]


def test_long_documents_are_cut_for_training(tmp_path):
    long_doc = ("a line of text\n" * 4000) + "x" * 40000
    tok = train_tokenizer([long_doc], tmp_path / "long", vocab_size=280)
    assert tok.decode(tok.encode(long_doc)) == long_doc


def test_load_and_pickle(tokenizer):
    loaded = Tokenizer.load(tokenizer.path)
    clone = pickle.loads(pickle.dumps(loaded))
    assert clone.encode("hello world") == tokenizer.encode("hello world")
    assert clone.path == tokenizer.path


def test_missing_tokenizer_file_names_path_and_fix(tmp_path):
    path = str(tmp_path / "nope.model")
    with pytest.raises(DataError, match="llmzoo tokenizer train") as info:
        Tokenizer.load(path)
    assert path in str(info.value) and "\n" not in str(info.value)


def test_corrupt_tokenizer_file(tmp_path):
    path = tmp_path / "bad.model"
    path.write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        Tokenizer.load(path)


def test_bad_training_arguments(tmp_path):
    with pytest.raises(DataError, match="model_type 'word'"):
        train_tokenizer(["abc"], tmp_path / "t", vocab_size=300, model_type="word")
    with pytest.raises(DataError, match="vocab_size=100000"):
        train_tokenizer(["just a little text"], tmp_path / "t", vocab_size=100000)
