"""From raw texts to word vectors with either method: tokenize, build the vocabulary, train.

Dimensions: V vocabulary, D vector width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from llmzoo.errors import ConfigError
from llmzoo.wordvec.glove import GloveConfig, train_glove, word_vectors
from llmzoo.wordvec.vocab import Vocab, build_vocab, encode, tokenize
from llmzoo.wordvec.word2vec import Word2VecConfig, train_word2vec

METHODS = {"word2vec": Word2VecConfig, "glove": GloveConfig}
ZERO_ALLOWED = ("seed", "sample")  # every other option must be positive


def method_config(method: str, **overrides) -> Word2VecConfig | GloveConfig:
    """The default config of ``method`` with the given fields replaced (None values ignored).

    Raises:
        ConfigError: the method or a field is unknown, or a value is out of range.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    cfg = METHODS[method]()
    fields = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"{method} has no option {unknown[0]!r}; options: {sorted(fields)}")
    for name, value in overrides.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        zero_ok = name in ZERO_ALLOWED
        if value is not None and not (number and (value >= 0 if zero_ok else value > 0)):
            kind = "a number >= 0" if zero_ok else "a positive number"
            raise ConfigError(f"{method} option {name}={value!r} must be {kind}")
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def train_vectors(
    texts: Iterable[str],
    cfg: Word2VecConfig | GloveConfig,
    *,
    min_count: int = 5,
    max_size: int | None = None,
) -> tuple[Vocab, np.ndarray, list[float]]:
    """Trains word vectors on texts, each text one document (windows stay inside it).

    Args:
        texts: the documents.
        cfg: a :class:`Word2VecConfig` (skip-gram with negative sampling) or a
            :class:`GloveConfig`.
        min_count, max_size: the vocabulary's limits (see :func:`build_vocab`).

    Returns:
        The vocabulary, the ``[V, D]`` float32 word vectors (Word2Vec: the input vectors; GloVe:
        ``W + W̃``) and the loss of each epoch.
    """
    documents = [tokenize(text) for text in texts]
    vocab = build_vocab(documents, min_count=min_count, max_size=max_size)
    ids = encode(vocab, documents)
    if isinstance(cfg, GloveConfig):
        params, history = train_glove(ids, len(vocab), cfg)
        vectors = word_vectors(params)
    else:
        params, history = train_word2vec(ids, vocab.counts, cfg)
        vectors = params["in"]
    return vocab, np.asarray(vectors, np.float32), history
