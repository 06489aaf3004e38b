"""T5 span corruption (Raffel et al. 2020), as NumPy on the host.

The semantics follow ``random_spans_noise_mask``, ``noise_span_to_unique_sentinel`` and
``random_spans_helper`` in google-research/text-to-text-transfer-transformer
(``t5/data/preprocessors.py``). A sequence of L tokens gets

- ``num_noise = round(L * noise_density)``, clipped to ``[1, L - 1]``,
- ``num_spans = max(1, round(num_noise / mean_span_length))`` noise spans and as many non-noise
  spans, alternating and starting with non-noise (so the last token is always noise),
- the lengths of the noise spans a uniformly random composition of ``num_noise`` into
  ``num_spans`` positive parts, and likewise for the non-noise spans.

``round`` rounds half to even, as ``tf.round`` and Python's ``round`` do. Example, with sentinels
``s0, s1`` and noise spans ``[b c]`` and ``[f]``::

    tokens   a b c d e f
    inputs   a s0 d e s1      (+ eos)
    targets  s0 b c s1 f      (+ eos)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmzoo.errors import DataError


def _check_span_args(noise_density: float, mean_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise DataError(f"noise_density={noise_density} is outside (0, 1); use e.g. 0.15")
    if mean_span_length < 1.0:
        raise DataError(f"mean_span_length={mean_span_length} is below 1; use e.g. 3.0")


def _span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """``(num_noise, num_spans)`` for a sequence of ``length >= 2`` tokens, as T5 computes them."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span_length), 1)
    if num_spans > length - num_noise:
        raise DataError(
            f"noise_density={noise_density} with mean_span_length={mean_span_length} needs "
            f"{num_spans} non-noise spans from {length - num_noise} tokens; lower noise_density "
            "or raise mean_span_length"
        )
    return num_noise, num_spans


def _segment_ends(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """``[num_segments]`` ends of a random split of ``num_items`` into non-empty segments.

    Every split is equally likely. T5 shuffles ``num_segments - 1`` segment starts among the
    ``num_items - 1`` gaps; drawing those gaps without replacement is the same distribution.
    """
    cuts = rng.choice(num_items - 1, size=num_segments - 1, replace=False) + 1
    return np.append(np.sort(cuts), num_items)


def random_spans_noise_mask(
    length: int,
    rng: np.random.Generator,
    *,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> np.ndarray:
    """Noise mask of random spans, with T5's span counts (see the module docstring).

    As in T5, a length of 1 is treated as 2 and the mask cut back to 1, so it has no noise.

    Args:
        length: L, the number of tokens, >= 1.
        rng: the generator that draws the span lengths.
        noise_density: approximate fraction of noise tokens, in (0, 1).
        mean_span_length: approximate mean length of a noise span, >= 1.

    Returns:
        ``[L]`` bool, True at noise tokens.
    """
    _check_span_args(noise_density, mean_span_length)
    if length < 1:
        raise DataError(f"length={length}; span corruption needs at least one token")
    padded = max(length, 2)
    num_noise, num_spans = _span_counts(padded, noise_density, mean_span_length)
    noise_ends = _segment_ends(num_noise, num_spans, rng)
    nonnoise_ends = _segment_ends(padded - num_noise, num_spans, rng)
    # Noise span j follows non-noise spans 0..j and noise spans 0..j-1.
    edges = np.zeros(padded + 1, np.int32)
    edges[nonnoise_ends + noise_ends - np.diff(noise_ends, prepend=0)] = 1
    edges[nonnoise_ends + noise_ends] = -1
    return np.cumsum(edges[:length]) > 0


def _is_sentinel(tokens: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
    """``tokens`` in ``sentinels`` (sorted), cheaper than ``np.isin`` on short rows."""
    index = np.minimum(np.searchsorted(sentinels, tokens), len(sentinels) - 1)
    return sentinels[index] == tokens


def span_corrupt(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    sentinel_ids: Sequence[int],
    eos_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption of one sequence: sentinels in the inputs, the spans in the targets.

    The i-th noise span is replaced in the inputs by ``sentinel_ids[i]``; the targets hold, for
    each span, its sentinel followed by its tokens. Invert with :func:`reassemble`.

    Args:
        tokens: ``[L]`` int token ids; none of them may be a sentinel.
        rng: the generator that draws the noise mask.
        noise_density: approximate fraction of noise tokens, in (0, 1).
        mean_span_length: approximate mean length of a noise span, >= 1.
        sentinel_ids: ids for span 0, 1, ...; T5's ``<extra_id_0>``, ``<extra_id_1>``, ... are
            ``vocab_size - 1``, ``vocab_size - 2``, ...
        eos_id: if given, appended to both inputs and targets.

    Returns:
        ``(inputs, targets)``: ``[S]`` and ``[U]`` int32, with ``S = L - num_noise + num_spans``
        and ``U = num_noise + num_spans`` (plus 1 each with ``eos_id``).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0:
        raise DataError(f"tokens has shape {tokens.shape}; pass one non-empty [L] sequence")
    sentinels = np.asarray(sentinel_ids, dtype=np.int64)
    _check_span_args(noise_density, mean_span_length)
    if sentinels.size == 0:
        raise DataError("sentinel_ids is empty; pass e.g. vocab_size - 1 - np.arange(100)")
    if len(tokens) > 1:
        num_spans = _span_counts(len(tokens), noise_density, mean_span_length)[1]
        if num_spans > len(sentinels):
            raise DataError(
                f"{len(tokens)} tokens make {num_spans} noise spans but only {len(sentinels)} "
                "sentinel_ids were given; pass more sentinels or shorter sequences"
            )
    if _is_sentinel(tokens, np.sort(sentinels)).any():
        raise DataError("tokens contain a sentinel id; pick sentinel_ids outside the text's ids")
    noise = random_spans_noise_mask(
        len(tokens), rng, noise_density=noise_density, mean_span_length=mean_span_length
    )
    after_noise = np.append(False, noise[:-1])
    first_noise = np.flatnonzero(noise & ~after_noise)
    span_sentinels = sentinels[: len(first_noise)]
    extra = np.array([] if eos_id is None else [eos_id], np.int64)
    inputs = tokens.copy()
    inputs[first_noise] = span_sentinels
    inputs = np.append(inputs[~(noise & after_noise)], extra).astype(np.int32)
    # The noise tokens, each span's sentinel inserted before its first token.
    span_starts = np.searchsorted(np.flatnonzero(noise), first_noise)
    targets = np.append(np.insert(tokens[noise], span_starts, span_sentinels), extra)
    return inputs, targets.astype(np.int32)


def reassemble(
    inputs: np.ndarray,
    targets: np.ndarray,
    sentinel_ids: Sequence[int],
    eos_id: int | None = None,
) -> np.ndarray:
    """Inverts :func:`span_corrupt`: puts each target span back in place of its sentinel.

    Args:
        inputs: ``[S]`` corrupted inputs from :func:`span_corrupt`.
        targets: ``[U]`` targets from the same call.
        sentinel_ids: the sentinels given to :func:`span_corrupt`.
        eos_id: the ``eos_id`` given to :func:`span_corrupt`; stripped from both.

    Returns:
        ``[L]`` int32, the original tokens.
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    if eos_id is not None:
        if not (len(inputs) and len(targets) and inputs[-1] == eos_id == targets[-1]):
            raise DataError(f"inputs and targets must both end with eos_id={eos_id}; pass eos_id")
        inputs, targets = inputs[:-1], targets[:-1]
    sentinels = np.sort(np.asarray(sentinel_ids))
    in_cut = np.flatnonzero(_is_sentinel(inputs, sentinels))
    target_cut = np.flatnonzero(_is_sentinel(targets, sentinels))
    starts_with_sentinel = len(targets) == 0 or (len(target_cut) > 0 and target_cut[0] == 0)
    if not (starts_with_sentinel and np.array_equal(inputs[in_cut], targets[target_cut])):
        raise DataError("inputs and targets hold different sentinels; pass one span_corrupt output")
    kept = np.split(inputs, in_cut)
    spans = [span[1:] for span in np.split(targets, target_cut)[1:]]
    # kept[0], then for each span: the span's tokens and the kept tokens after its sentinel.
    pieces = [kept[0]] + [x for span, k in zip(spans, kept[1:], strict=True) for x in (span, k[1:])]
    return np.concatenate(pieces).astype(np.int32)


def span_corruption_lengths(
    inputs_length: int,
    noise_density: float,
    mean_span_length: float,
    *,
    add_eos: bool = True,
) -> tuple[int, int]:
    """T5's ``random_spans_helper``: the raw length whose corruption fills ``inputs_length``.

    A raw length t gives ``t - n + k + e`` inputs and ``n + k + e`` targets, with
    ``n = round(t * noise_density)`` noise tokens, ``k = round(n / mean_span_length)`` spans
    (one sentinel each) and ``e = 1`` eos (0 if not ``add_eos``). ``tokens_length`` is the largest
    t whose inputs fit in ``inputs_length``; as in T5, when ``noise_density == 0.5`` and the
    targets come out longer than the inputs, both ``tokens_length`` and ``targets_length`` drop
    by one (the corrupted row may then be a token shorter than both, and is padded).
    E.g. ``(512, 0.15, 3.0) -> (568, 114)``.

    Args:
        inputs_length: S, the length of the corrupted inputs, eos included.
        noise_density: approximate fraction of noise tokens, in (0, 1).
        mean_span_length: approximate mean length of a noise span, >= 1.
        add_eos: count one eos in both the inputs and the targets.

    Returns:
        ``(tokens_length, targets_length)``: the raw row length to pack, and the length of the
        targets of such a row.
    """
    _check_span_args(noise_density, mean_span_length)
    eos = int(add_eos)
    if inputs_length < 2 + eos:
        raise DataError(f"inputs_length={inputs_length} is too short; use at least {2 + eos}")

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise = round(tokens_length * noise_density)
        num_spans = round(num_noise / mean_span_length)
        return tokens_length - num_noise + num_spans + eos, num_noise + num_spans + eos

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs:
        tokens_length, targets_length = tokens_length - 1, targets_length - 1
    return tokens_length, targets_length


def span_corrupt_batch(
    rows: Sequence[np.ndarray] | np.ndarray,
    rng: np.random.Generator,
    *,
    inputs_length: int,
    targets_length: int,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
    sentinel_ids: Sequence[int],
    eos_id: int | None = None,
) -> dict[str, np.ndarray]:
    """Corrupts each row with :func:`span_corrupt` and pads to fixed lengths with 0.

    Rows of ``span_corruption_lengths(inputs_length, ...)[0]`` tokens fill the inputs exactly.

    Args:
        rows: ``[B, L]`` int array, or B one-dimensional sequences.
        rng: the generator that draws every noise mask, row after row.
        inputs_length: S, the padded length of the inputs.
        targets_length: U, the padded length of the targets.
        noise_density, mean_span_length, sentinel_ids, eos_id: as in :func:`span_corrupt`.

    Returns:
        A dict of ``inputs [B, S] int32``, ``targets [B, U] int32``, ``input_mask [B, S] int32``
        (1 = real token, 0 = padding) and ``target_mask [B, U] float32`` (1 = a target to score).
    """
    batch = len(rows)
    out = {
        "inputs": np.zeros((batch, inputs_length), np.int32),
        "targets": np.zeros((batch, targets_length), np.int32),
        "input_mask": np.zeros((batch, inputs_length), np.int32),
        "target_mask": np.zeros((batch, targets_length), np.float32),
    }
    for b, row in enumerate(rows):
        inputs, targets = span_corrupt(
            row,
            rng,
            noise_density=noise_density,
            mean_span_length=mean_span_length,
            sentinel_ids=sentinel_ids,
            eos_id=eos_id,
        )
        if len(inputs) > inputs_length or len(targets) > targets_length:
            raise DataError(
                f"row {b} of {len(row)} tokens corrupts to {len(inputs)} inputs and {len(targets)} "
                f"targets, over ({inputs_length}, {targets_length}); pack rows of "
                "span_corruption_lengths(inputs_length, ...)[0] tokens"
            )
        for key, x in (("inputs", inputs), ("targets", targets)):
            out[key][b, : len(x)] = x
        out["input_mask"][b, : len(inputs)] = 1
        out["target_mask"][b, : len(targets)] = 1
    return out
