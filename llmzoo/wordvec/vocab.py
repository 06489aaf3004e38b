"""Word tokenization and vocabularies for classic word embeddings.

A word is a lowercase run of letters, digits and underscores that does not start with a digit
(nor inside a number: ``3.5e2`` gives none), so that Python identifiers survive whole (``def``,
``int``, ``__init__``, ``isinstance``); punctuation and numbers are dropped.

Dimensions: V words in the vocabulary, N tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np

from llmzoo.errors import DataError

WORD_RE = re.compile(r"\b[a-z_][a-z0-9_]*")


def tokenize(text: str) -> list[str]:
    """Splits ``text`` into lowercase words (identifier-like runs, see the module docstring)."""
    return WORD_RE.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Words by descending count (ties alphabetical); the id of a word is its position.

    Attributes:
        words: ``V`` distinct words.
        counts: ``[V]`` int64, how often each word occurs in the corpus it was built from.
    """

    words: tuple[str, ...]
    counts: np.ndarray

    @property
    def index(self) -> dict[str, int]:
        """Word -> id."""
        return {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)


def build_vocab(
    documents: Iterable[Sequence[str]], *, min_count: int = 5, max_size: int | None = None
) -> Vocab:
    """Counts the words of tokenized documents and keeps the frequent ones.

    Args:
        documents: each a sequence of words (see :func:`tokenize`).
        min_count: drop words seen fewer times than this.
        max_size: keep at most this many of the most frequent words (None: no limit).

    Returns:
        A :class:`Vocab` sorted by descending count.

    Raises:
        DataError: fewer than two words are kept.
    """
    counter = collections.Counter(w for doc in documents for w in doc)
    kept = sorted((w for w, c in counter.items() if c >= min_count), key=lambda w: (-counter[w], w))
    if max_size is not None:
        kept = kept[:max_size]
    if len(kept) < 2:
        raise DataError(
            f"only {len(kept)} distinct words are kept (min_count={min_count}, max_size="
            f"{max_size}) of the {len(counter)} in {sum(counter.values())} words of text; "
            "lower min_count, raise max_size or give more text"
        )
    return Vocab(tuple(kept), np.array([counter[w] for w in kept], np.int64))


def encode(vocab: Vocab, documents: Iterable[Sequence[str]]) -> list[np.ndarray]:
    """Maps each document's words to ids, dropping words outside the vocabulary.

    Returns:
        One ``[N_doc]`` int32 array per document (possibly empty).
    """
    index = vocab.index
    return [np.array([index[w] for w in doc if w in index], np.int32) for doc in documents]


def concatenate(documents: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Joins documents of word ids, remembering where each id came from.

    Returns:
        ``ids [N]`` int64, all the documents' ids in order, and ``doc [N]``, the index of each
        id's document (so that a window can be kept inside one document: ``doc[i] == doc[j]``).
    """
    ids = np.concatenate([np.asarray(d, np.int64) for d in documents] or [np.zeros(0, np.int64)])
    return ids, np.repeat(np.arange(len(documents)), [len(d) for d in documents])
