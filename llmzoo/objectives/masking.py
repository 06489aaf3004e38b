"""BERT masked-language-model corruption (Devlin et al. 2019), as NumPy on the host.

These functions run inside a Grain pipeline, not under ``jit``: they take token arrays and a
``np.random.Generator`` and return new arrays, deterministic given the generator's state.

Selection is an independent Bernoulli(``mask_prob``) draw per candidate position (or per
candidate word, see :func:`mask_tokens`), as in Hugging Face's ``DataCollatorForLanguageModeling``,
rather than the exact count ``max(1, round(n * mask_prob))`` of BERT's
``create_pretraining_data.py``. The expected fraction is exactly ``mask_prob`` for any padding
pattern, the work is one vectorised draw per batch, and a row may (rarely) have no selected
position at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmzoo.errors import DataError


def _check_mask_args(
    tokens: np.ndarray,
    mask_prob: float,
    mask_id: int,
    vocab_size: int,
    random_prob: float,
    keep_prob: float,
) -> None:
    if tokens.ndim not in (1, 2) or tokens.size == 0:
        raise DataError(f"tokens has shape {tokens.shape}; pass a non-empty [T] or [B, T] array")
    if not 0.0 < mask_prob < 1.0:
        raise DataError(f"mask_prob={mask_prob} is outside (0, 1); use e.g. 0.15")
    if mask_id < 0:
        raise DataError(f"mask_id={mask_id} is negative; pass the [MASK] token's id")
    if random_prob < 0 or keep_prob < 0 or random_prob + keep_prob > 1:
        raise DataError(
            f"random_prob={random_prob} and keep_prob={keep_prob} must be >= 0 with a sum <= 1"
        )


def _as_batch(name: str, x: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``x`` as a ``[B, T]`` array, checked against the (batched) tokens' shape."""
    if x is None:
        return None
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None]
    if x.shape != shape:
        raise DataError(f"{name} has shape {x.shape} but tokens have {shape}; pass one per token")
    return x


def _random_ids(rng: np.random.Generator, n: int, vocab_size: int, excluded: np.ndarray):
    """``n`` ids uniform over ``[0, vocab_size)`` minus the sorted unique ``excluded`` ids."""
    allowed = vocab_size - len(excluded)
    if allowed <= 0:
        raise DataError(f"special_ids cover all of vocab_size={vocab_size}; set random_prob=0")
    r = rng.integers(0, allowed, size=n)
    # Shift each draw past the excluded ids at or below it (excluded[i] - i counts allowed ids).
    return r + np.searchsorted(excluded - np.arange(len(excluded)), r, side="right")


def _word_selection(
    candidate: np.ndarray, word_starts: np.ndarray, rng: np.random.Generator, mask_prob: float
) -> np.ndarray:
    """``[B, T]`` bool: every piece of each chosen word, words chosen with prob ``mask_prob``."""
    starts = word_starts.astype(bool).copy()
    # A word never spans a candidate and a non-candidate piece, nor two rows.
    starts[:, 1:] |= candidate[:, 1:] != candidate[:, :-1]
    starts[:, 0] = True
    word_id = np.cumsum(starts.ravel()) - 1
    chosen = rng.random(int(word_id[-1]) + 1) < mask_prob
    return chosen[word_id].reshape(candidate.shape) & candidate


def mask_tokens(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_prob: float = 0.15,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int] = (),
    random_prob: float = 0.1,
    keep_prob: float = 0.1,
    word_starts: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BERT masked-LM corruption: select positions, then mask, randomise or keep each.

    Candidates are the valid positions whose token is not in ``special_ids``. Each candidate is
    selected independently with probability ``mask_prob`` (see the module docstring). Each selected
    position then independently becomes ``mask_id`` with probability
    ``1 - random_prob - keep_prob`` (0.8 by default), a random id with probability
    ``random_prob``, or stays unchanged with probability ``keep_prob``. Random ids are uniform over
    ``[0, vocab_size)`` without ``special_ids`` and ``mask_id``.

    Whole-word masking: with ``word_starts``, each *word* (a start piece and the non-start pieces
    after it) is chosen with probability ``mask_prob`` and all its candidate pieces are selected
    together, so the expected fraction of selected *tokens* is still exactly ``mask_prob``, with a
    larger variance. A change of candidacy (a special token, padding) also ends a word. The
    80/10/10 decision stays per piece, as in BERT's ``create_pretraining_data.py``.

    Args:
        tokens: ``[B, T]`` or ``[T]`` int token ids.
        rng: the generator that draws every random choice.
        mask_prob: probability that a candidate position (or word) is selected, in (0, 1).
        mask_id: id of ``[MASK]``; it may lie past ``vocab_size`` (an id reserved beyond the
            tokenizer's vocabulary).
        vocab_size: V; random replacements are drawn from ``[0, V)``.
        special_ids: ids never selected (e.g. ``[CLS]``, ``[SEP]``, ``[PAD]``).
        random_prob: share of selected positions replaced by a random id.
        keep_prob: share of selected positions left unchanged.
        word_starts: ``[B, T]`` bool, True on the first piece of each word (see
            :func:`word_starts_from_pieces`); None masks single tokens.
        valid: ``[B, T]`` 1 for a real token, 0 for padding; default all real.

    Returns:
        ``(inputs, targets, loss_mask)``, each shaped like ``tokens``: ``inputs`` int32, the
        corrupted ids; ``targets`` int32, the original ids; ``loss_mask`` float32, 1 at selected
        positions.
    """
    tokens = np.asarray(tokens)
    _check_mask_args(tokens, mask_prob, mask_id, vocab_size, random_prob, keep_prob)
    batch = tokens.reshape(-1, tokens.shape[-1]).astype(np.int32)
    valid = _as_batch("valid", valid, batch.shape)
    word_starts = _as_batch("word_starts", word_starts, batch.shape)
    excluded = np.unique(np.asarray([*special_ids, mask_id], dtype=np.int64))
    excluded = excluded[(excluded >= 0) & (excluded < vocab_size)]

    candidate = ~np.isin(batch, np.asarray(special_ids, dtype=np.int64))
    if valid is not None:
        candidate &= valid.astype(bool)
    if word_starts is None:
        selected = (rng.random(batch.shape) < mask_prob) & candidate
    else:
        selected = _word_selection(candidate, word_starts, rng, mask_prob)

    action = rng.random(batch.shape)
    to_mask = selected & (action < 1.0 - random_prob - keep_prob)
    to_random = selected & ~to_mask & (action < 1.0 - keep_prob)
    inputs = np.where(to_mask, mask_id, batch).astype(np.int32)
    inputs[to_random] = _random_ids(rng, int(to_random.sum()), vocab_size, excluded)
    outputs = inputs, batch, selected.astype(np.float32)
    return tuple(x.reshape(tokens.shape) for x in outputs)


def word_starts_from_pieces(pieces: Sequence[str], *, scheme: str = "auto") -> np.ndarray:
    """Marks the pieces that start a word, for whole-word masking.

    SentencePiece marks a word start with a ``'▁'`` prefix; WordPiece marks a continuation with a
    ``'##'`` prefix. ``scheme='auto'`` picks WordPiece when any piece starts with ``'##'``, else
    SentencePiece. The first piece always starts a word. Special tokens need no care here:
    :func:`mask_tokens` ends a word wherever a special token or padding begins or ends.

    Args:
        pieces: ``[T]`` piece strings, e.g. from ``tokenizer.id_to_piece``.
        scheme: ``'sentencepiece'``, ``'wordpiece'`` or ``'auto'``.

    Returns:
        ``[T]`` bool, True on the first piece of each word.
    """
    if scheme == "auto":
        scheme = "wordpiece" if any(p.startswith("##") for p in pieces) else "sentencepiece"
    if scheme == "wordpiece":
        starts = [not p.startswith("##") for p in pieces]
    elif scheme == "sentencepiece":
        starts = [p.startswith("▁") for p in pieces]
    else:
        raise DataError(f"scheme={scheme!r}; use 'sentencepiece', 'wordpiece' or 'auto'")
    starts = np.asarray(starts, dtype=bool)
    if starts.size:
        starts[0] = True
    return starts
