"""The word2vec text format and cosine nearest neighbours."""

import numpy as np
import pytest

from llmzoo.errors import DataError
from llmzoo.wordvec import load_word2vec_text, neighbours, save_word2vec_text


def test_text_format_round_trip(tmp_path):
    words = ["def", "int", "__init__", "list"]
    vectors = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    path = str(tmp_path / "sub" / "vectors.txt")
    save_word2vec_text(path, words, vectors)
    lines = open(path, encoding="utf-8").read().splitlines()
    assert lines[0] == "4 3"
    assert lines[1].split()[0] == "def" and len(lines[1].split()) == 4
    loaded_words, loaded = load_word2vec_text(path)
    assert loaded_words == words
    np.testing.assert_allclose(loaded, vectors, rtol=1e-5)  # 6 significant digits


def test_gensim_reads_the_file(tmp_path):
    gensim = pytest.importorskip("gensim")
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_word2vec_text(str(tmp_path / "v.txt"), ["a", "b"], vectors)
    kv = gensim.models.KeyedVectors.load_word2vec_format(str(tmp_path / "v.txt"), binary=False)
    np.testing.assert_allclose(kv["b"], vectors[1])


def test_bad_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="nope.txt' not found"):
        load_word2vec_text(str(tmp_path / "nope.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("2 3\na 1 2 3\nb 1 2\n")
    with pytest.raises(DataError, match="not a word2vec text file"):
        load_word2vec_text(str(bad))
    with pytest.raises(DataError, match="whitespace"):
        save_word2vec_text(str(tmp_path / "w.txt"), ["a b"], np.zeros((1, 2)))


def test_neighbours_by_cosine():
    words = ["x", "near", "far", "opposite", "zero"]
    vectors = np.array([[1.0, 0.0], [10.0, 1.0], [0.0, 3.0], [-2.0, 0.0], [0.0, 0.0]])
    result = neighbours(vectors, words, "x", k=3)
    assert [w for w, _ in result] == ["near", "far", "zero"]  # length does not matter
    np.testing.assert_allclose([s for _, s in result], [10 / np.sqrt(101), 0.0, 0.0], atol=1e-6)
    assert len(neighbours(vectors, words, "x", k=100)) == 4  # never the word itself
    with pytest.raises(DataError, match="k=0"):
        neighbours(vectors, words, "x", k=0)


def test_unknown_word_is_named_with_close_words():
    with pytest.raises(DataError, match=r"word 'lsit' is not in the vocabulary of 3 words.*list"):
        neighbours(np.eye(3), ["list", "int", "def"], "lsit")
