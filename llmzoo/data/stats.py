"""Corpus statistics: the unigram baseline that a trained language model must beat."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from llmzoo.errors import DataError


def _counts(token_ids: Iterable, vocab_size: int) -> np.ndarray:
    """Counts ids, [V] int64, from an iterable of ints or of int arrays/lists of any shape."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for chunk in token_ids:
        ids = np.asarray(chunk, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise DataError(
                f"token id {int(ids.min() if ids.min() < 0 else ids.max())} is outside "
                f"[0, {vocab_size}); pass the tokenizer's vocab_size"
            )
        counts += np.bincount(ids, minlength=vocab_size)
    return counts


def unigram_entropy(
    token_ids: Iterable, vocab_size: int, *, eval_token_ids: Iterable | None = None
) -> float:
    """Entropy, in nats per token, of an add-one smoothed unigram model.

    The model is ``p(v) = (count(v) + 1) / (N + V)``, where ``count`` counts the ids in
    ``token_ids`` (e.g. the train split), N is their number and V = ``vocab_size``.

    - Without ``eval_token_ids``: returns the entropy ``-sum_v p(v) log p(v)``.
    - With ``eval_token_ids`` (e.g. the validation targets): returns the cross-entropy
      ``-mean_i log p(x_i)`` over those tokens, i.e. the validation loss of the unigram model.
      Feed it exactly the tokens the model is scored on, e.g. ``b['targets'][b['loss_mask'] > 0]``
      for each eval batch ``b``, to compare it with the model's validation loss.

    Args:
        token_ids: iterable of ints, or of int arrays/lists (any shape), to count.
        vocab_size: V, the number of possible ids.
        eval_token_ids: optional tokens to score, same forms as ``token_ids``.

    Returns:
        Nats per token.
    """
    counts = _counts(token_ids, vocab_size)
    log_p = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    if eval_token_ids is None:
        return float(-(np.exp(log_p) * log_p).sum())
    eval_counts = _counts(eval_token_ids, vocab_size)
    if eval_counts.sum() == 0:
        raise DataError("eval_token_ids is empty; pass the validation tokens to score")
    return float(-(eval_counts * log_p).sum() / eval_counts.sum())
