"""BART denoising (Lewis et al. 2020): text infilling and sentence permutation, as NumPy.

BART's best recipe permutes the sentences of a document, then masks about 30% of its tokens
in spans whose lengths follow Poisson(3); each span becomes one mask token, and a span of length 0
inserts one. The model reads the corrupted text and is trained to write the original.

The infilling follows fairseq's ``DenoisingDataset.add_whole_word_mask`` (with
``mask_length='span-poisson'`` and ``replace_length=1``) loosely, with these differences:

- spans start at any token, not only at word starts, and ``round`` (not ``ceil``) sets the budget;
- spans never overlap: they are placed uniformly at random among the non-overlapping layouts,
  so exactly ``round(L * mask_ratio)`` tokens are removed (fairseq's may merge and remove fewer);
- no token is special: pass the sequence without its ``bos``/``eos`` if those must survive;
- masked positions are never replaced by random tokens (fairseq's ``random_ratio``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmzoo.errors import DataError


def _check_tokens(tokens: np.ndarray) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0:
        raise DataError(f"tokens has shape {tokens.shape}; pass one non-empty [L] sequence")
    return tokens


def _poisson_lengths(num_to_mask: int, poisson_lambda: float, rng: np.random.Generator):
    """Poisson span lengths, the last trimmed so that they sum to exactly ``num_to_mask``."""
    lengths = rng.poisson(poisson_lambda, size=num_to_mask)
    while lengths.sum() < num_to_mask:
        lengths = np.concatenate([lengths, rng.poisson(poisson_lambda, size=num_to_mask)])
    cum = np.cumsum(lengths)
    last = int(np.searchsorted(cum, num_to_mask))  # The first span that reaches the budget.
    lengths = lengths[: last + 1]
    lengths[last] = num_to_mask - (cum[last - 1] if last else 0)
    return lengths


def infill_spans(
    length: int,
    rng: np.random.Generator,
    *,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The spans that :func:`text_infill` removes from a sequence of ``length`` tokens.

    Span lengths are drawn from Poisson(``poisson_lambda``) until they reach
    ``round(length * mask_ratio)`` tokens, the last one trimmed to hit that budget exactly. They
    are shuffled and laid out without overlap, every layout equally likely; spans may touch.

    Args:
        length: L, the number of tokens.
        rng: the generator that draws the lengths and the layout.
        mask_ratio: fraction of the tokens to remove, in (0, 1).
        poisson_lambda: mean of the span-length distribution, > 0.

    Returns:
        ``(starts, lengths)``: ``[N]`` int arrays, sorted by start; a span of length 0 marks an
        insertion before token ``start`` (``start`` may then equal L).
    """
    if length < 1:
        raise DataError(f"length={length}; text infilling needs at least one token")
    if not 0.0 < mask_ratio < 1.0:
        raise DataError(f"mask_ratio={mask_ratio} is outside (0, 1); use e.g. 0.3")
    if poisson_lambda <= 0:
        raise DataError(f"poisson_lambda={poisson_lambda} must be > 0; use e.g. 3.0")
    num_to_mask = round(length * mask_ratio)
    if num_to_mask == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lengths = rng.permutation(_poisson_lengths(num_to_mask, poisson_lambda, rng))
    num_spans = len(lengths)
    # Stars and bars: choosing the spans' slots among kept tokens + spans gives a uniform layout.
    slots = np.sort(rng.choice(length - num_to_mask + num_spans, size=num_spans, replace=False))
    starts = slots - np.arange(num_spans) + np.cumsum(lengths) - lengths
    return starts, lengths


def text_infill(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    mask_id: int,
) -> np.ndarray:
    """BART text infilling: each span of :func:`infill_spans` becomes one ``mask_id``.

    The same generator state gives the same spans as ``infill_spans(len(tokens), rng, ...)``.

    Args:
        tokens: ``[L]`` int token ids.
        rng: the generator that draws the spans.
        mask_ratio: fraction of the tokens to remove, in (0, 1).
        poisson_lambda: mean span length, > 0.
        mask_id: id of the mask token.

    Returns:
        ``[L - M + N]`` int32 for M removed tokens in N spans: the kept tokens in order, with one
        ``mask_id`` in place of each span.
    """
    tokens = _check_tokens(tokens)
    length = len(tokens)
    starts, lengths = infill_spans(
        length, rng, mask_ratio=mask_ratio, poisson_lambda=poisson_lambda
    )
    removed = np.zeros(length, bool)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    removed[np.repeat(starts, lengths) + offsets] = True
    # Before each token come the masks of the spans that start there, then the token if kept.
    masks_before = np.bincount(starts, minlength=length + 1)
    group_end = np.cumsum(masks_before + np.append(~removed, False))
    out = np.full(group_end[-1], mask_id, np.int32)
    out[group_end[:-1][~removed] - 1] = tokens[~removed]
    return out


def permute_sentences(
    tokens: np.ndarray, rng: np.random.Generator, *, sentence_end_ids: Sequence[int]
) -> np.ndarray:
    """BART sentence permutation: split after each sentence end, shuffle the sentences, re-join.

    A trailing piece without a sentence end is a sentence too. The output is a permutation of
    the tokens that keeps each sentence intact.

    Args:
        tokens: ``[L]`` int token ids.
        rng: the generator that draws the order.
        sentence_end_ids: ids that end a sentence (e.g. those of ``.``, ``!``, ``?``).

    Returns:
        ``[L]`` int32, the sentences in a uniformly random order.
    """
    tokens = _check_tokens(tokens)
    if len(sentence_end_ids) == 0:
        raise DataError("sentence_end_ids is empty; pass the ids of e.g. '.', '!' and '?'")
    ends = np.flatnonzero(np.isin(tokens, np.asarray(sentence_end_ids))) + 1
    sentences = np.split(tokens, ends[ends < len(tokens)])
    order = rng.permutation(len(sentences))
    return np.concatenate([sentences[i] for i in order]).astype(np.int32)


def denoise_example(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    mask_id: int,
    sentence_end_ids: Sequence[int] | None = None,
    permute: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One BART pretraining example: permute the sentences, then infill, as fairseq does.

    Args:
        tokens: ``[L]`` int token ids (without ``bos``/``eos``, which the caller adds to both).
        rng: the generator that draws every random choice.
        mask_ratio, poisson_lambda, mask_id: as in :func:`text_infill`.
        sentence_end_ids: as in :func:`permute_sentences`; needed when ``permute``.
        permute: shuffle the sentences before infilling.

    Returns:
        ``(inputs, targets)``: the corrupted ``[S]`` int32 and the original ``[L]`` int32.
    """
    tokens = _check_tokens(tokens)
    noisy = tokens
    if permute:
        if sentence_end_ids is None:
            raise DataError("permute=True needs sentence_end_ids; pass them or set permute=False")
        noisy = permute_sentences(tokens, rng, sentence_end_ids=sentence_end_ids)
    inputs = text_infill(
        noisy, rng, mask_ratio=mask_ratio, poisson_lambda=poisson_lambda, mask_id=mask_id
    )
    return inputs, tokens.astype(np.int32)
