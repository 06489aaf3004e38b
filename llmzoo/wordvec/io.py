"""Word vectors on disk in the word2vec text format, and nearest neighbours by cosine similarity.

The format of the original word2vec tool (``-binary 0``), which gensim reads with
``KeyedVectors.load_word2vec_format(path, binary=False)``: a header line ``"V D"``, then one line
per word, ``"word v_1 ... v_D"``, separated by single spaces. Words must not contain whitespace
(those of :func:`llmzoo.wordvec.vocab.tokenize` never do).

Dimensions: V words, D vector width.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence

import numpy as np

from llmzoo.errors import DataError


def save_word2vec_text(path: str, words: Sequence[str], vectors) -> None:
    """Writes ``vectors [V, D]`` for ``words`` in the word2vec text format (float32, ``%.6g``).

    The file is written to ``path + '.tmp'`` and renamed, so a failed write leaves no half file.

    Raises:
        DataError: the numbers of words and vectors differ, or a word contains whitespace.
    """
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise DataError(f"{len(words)} words but vectors of shape {vectors.shape}; need [V, D]")
    bad = [w for w in words if not w or w.split() != [w]]
    if bad:
        raise DataError(f"word {bad[0]!r} is empty or contains whitespace; the format forbids it")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(f"{vectors.shape[0]} {vectors.shape[1]}\n")
        for word, row in zip(words, vectors, strict=True):
            f.write(word + " " + " ".join(f"{v:.6g}" for v in row) + "\n")
    os.replace(path + ".tmp", path)


def load_word2vec_text(path: str) -> tuple[list[str], np.ndarray]:
    """Reads a word2vec text file.

    Returns:
        The ``V`` words and their ``[V, D]`` float32 vectors.

    Raises:
        DataError: the file is missing or is not in the word2vec text format.
    """
    if not os.path.isfile(path):
        raise DataError(
            f"vectors file {path!r} not found; write one with `llmzoo embeddings train --out PATH`"
        )
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    try:
        n_words, dim = (int(v) for v in lines[0].split())
        words = [line.split(" ", 1)[0] for line in lines[1 : 1 + n_words]]
        vectors = np.array([line.split()[1:] for line in lines[1 : 1 + n_words]], np.float32)
        if vectors.shape != (n_words, dim):
            raise ValueError(f"header says {n_words} x {dim}, the rows hold {vectors.shape}")
    except (ValueError, IndexError) as e:
        raise DataError(
            f"{path!r} is not a word2vec text file ({e}); expected a 'V D' header line, then "
            "'word v_1 ... v_D' lines"
        ) from None
    return words, vectors


def unit_rows(vectors) -> np.ndarray:
    """``vectors [V, D]`` with each row scaled to unit L2 norm (zero rows stay zero)."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def neighbours(vectors, vocab: Sequence[str], word: str, k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` words whose vectors have the largest cosine similarity to ``word``'s.

    Args:
        vectors: ``[V, D]``, row ``i`` the vector of ``vocab[i]``.
        vocab: the ``V`` words.
        word: the query; it is not its own neighbour.
        k: how many neighbours (fewer if the vocabulary is smaller).

    Returns:
        ``(word, cosine)`` pairs, most similar first.

    Raises:
        DataError: ``word`` is not in ``vocab`` (the message names it and suggests close words),
            or ``k < 1``.
    """
    if k < 1:
        raise DataError(f"k={k} neighbours asked for; ask for at least 1")
    index = {w: i for i, w in enumerate(vocab)}
    if word not in index:
        close = difflib.get_close_matches(word, list(vocab), n=3)
        hint = f"; close words: {', '.join(close)}" if close else ""
        raise DataError(f"word {word!r} is not in the vocabulary of {len(vocab)} words{hint}")
    unit = unit_rows(vectors)
    sims = unit @ unit[index[word]]
    sims[index[word]] = -np.inf
    order = np.argsort(-sims, kind="stable")[: min(k, len(vocab) - 1)]
    return [(vocab[i], float(sims[i])) for i in order]
