"""Sentence-pair objectives: BERT next-sentence and ALBERT sentence-order prediction, as NumPy.

Both build ``[CLS] A [SEP] B [SEP]`` rows from documents given as lists of segments (each a list
or 1-D array of token ids). Every pair of consecutive segments ``(doc[i], doc[i + 1])`` of a
document gives one example; a segment is whatever the caller passes (BERT packs several sentences
into a segment of about half the row, so group sentences first to follow it).

- NSP (Devlin et al. 2019): B is the true next segment (label 0, IsNext) or, with probability
  0.5, a random segment of another document (label 1, NotNext), as Hugging Face's
  ``BertForPreTraining`` ``next_sentence_label`` expects.
- SOP (Lan et al. 2020, ALBERT): A and B are the two consecutive segments, swapped with
  probability 0.5 (label 1 = swapped, Hugging Face ``AlbertForPreTraining``
  ``sentence_order_label``).

Pairs longer than ``max_length`` are truncated as BERT's ``truncate_seq_pair`` does: one token at
a time from the longer segment (B on a tie), each from its front or its back with probability 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmzoo.errors import DataError

Documents = Sequence[Sequence[Sequence[int] | np.ndarray]]


def _check_docs(docs: Documents, max_length: int, min_docs: int) -> list[list[np.ndarray]]:
    if max_length < 5:
        raise DataError(f"max_length={max_length} leaves no room for two segments; use >= 5")
    if len(docs) < min_docs:
        raise DataError(f"{len(docs)} documents given; pass at least {min_docs}")
    arrays = [[np.asarray(s, dtype=np.int32) for s in doc] for doc in docs]
    for d, doc in enumerate(arrays):
        if not doc:
            raise DataError(f"document {d} has no segments; drop empty documents")
        for i, seg in enumerate(doc):
            if seg.ndim != 1 or seg.size == 0:
                raise DataError(f"segment {i} of document {d} is empty or not 1-D; drop it")
    return arrays


def _truncated_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """The lengths that BERT's ``truncate_seq_pair`` leaves for a pair of segments."""
    if len_a + len_b <= budget:
        return len_a, len_b
    if len_b <= budget // 2:
        return budget - len_b, len_b
    if len_a <= (budget + 1) // 2:
        return len_a, budget - len_a
    return (budget + 1) // 2, budget // 2


def _trim(segment: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
    """``segment`` cut to ``keep`` tokens, each removed token from the front or back at random."""
    front = rng.binomial(len(segment) - keep, 0.5)
    return segment[front : front + keep]


def _pack_pairs(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    *,
    max_length: int,
    cls_id: int,
    sep_id: int,
) -> dict[str, np.ndarray]:
    """Truncates each ``(A, B)`` and writes ``[CLS] A [SEP] B [SEP]`` rows padded with 0."""
    n = len(pairs)
    out = {
        "tokens": np.zeros((n, max_length), np.int32),
        "token_type_ids": np.zeros((n, max_length), np.int32),
        "valid": np.zeros((n, max_length), np.int32),
    }
    for row, (a, b) in enumerate(pairs):
        len_a, len_b = _truncated_lengths(len(a), len(b), max_length - 3)
        a, b = _trim(a, len_a, rng), _trim(b, len_b, rng)
        ids = np.concatenate([[cls_id], a, [sep_id], b, [sep_id]])
        out["tokens"][row, : len(ids)] = ids
        out["token_type_ids"][row, len_a + 2 : len(ids)] = 1
        out["valid"][row, : len(ids)] = 1
    return out


def nsp_pairs(
    docs_sentences: Documents,
    rng: np.random.Generator,
    *,
    max_length: int,
    cls_id: int,
    sep_id: int,
) -> dict[str, np.ndarray]:
    """BERT next-sentence-prediction examples from consecutive segments (see module docstring).

    A NotNext B is a uniformly random segment of a uniformly random *other* document.

    Args:
        docs_sentences: documents, each a list of segments of token ids.
        rng: the generator that draws labels, random segments and truncation.
        max_length: S, the row length; ``[CLS] A [SEP] B [SEP]`` is truncated to fit.
        cls_id: id of ``[CLS]``.
        sep_id: id of ``[SEP]``.

    Returns:
        A dict, N being the number of consecutive segment pairs: ``tokens [N, S] int32`` (0 pad);
        ``token_type_ids [N, S] int32``, 0 for ``[CLS] A [SEP]`` and padding, 1 for ``B [SEP]``;
        ``valid [N, S] int32``, 1 on real tokens; ``next_sentence_label [N] int32``, 0 IsNext,
        1 NotNext.
    """
    docs = _check_docs(docs_sentences, max_length, min_docs=2)
    firsts = [(d, i) for d, doc in enumerate(docs) for i in range(len(doc) - 1)]
    labels = (rng.random(len(firsts)) < 0.5).astype(np.int32)
    pairs = []
    for (d, i), not_next in zip(firsts, labels, strict=True):
        if not_next:
            other = (d + 1 + rng.integers(len(docs) - 1)) % len(docs)  # Any document but d.
            b = docs[other][rng.integers(len(docs[other]))]
        else:
            b = docs[d][i + 1]
        pairs.append((docs[d][i], b))
    out = _pack_pairs(pairs, rng, max_length=max_length, cls_id=cls_id, sep_id=sep_id)
    return out | {"next_sentence_label": labels}


def sop_pairs(
    docs_sentences: Documents,
    rng: np.random.Generator,
    *,
    max_length: int,
    cls_id: int,
    sep_id: int,
) -> dict[str, np.ndarray]:
    """ALBERT sentence-order-prediction examples: consecutive segments, swapped with prob 0.5.

    Args:
        docs_sentences: documents, each a list of segments of token ids.
        rng: the generator that draws labels and truncation.
        max_length: S, the row length; ``[CLS] A [SEP] B [SEP]`` is truncated to fit.
        cls_id: id of ``[CLS]``.
        sep_id: id of ``[SEP]``.

    Returns:
        As :func:`nsp_pairs`, with ``sentence_order_label [N] int32`` (0 in order, 1 swapped: A
        is then the later segment) in place of ``next_sentence_label``.
    """
    docs = _check_docs(docs_sentences, max_length, min_docs=1)
    firsts = [(d, i) for d, doc in enumerate(docs) for i in range(len(doc) - 1)]
    labels = (rng.random(len(firsts)) < 0.5).astype(np.int32)
    pairs = [
        (docs[d][i + 1], docs[d][i]) if swapped else (docs[d][i], docs[d][i + 1])
        for (d, i), swapped in zip(firsts, labels, strict=True)
    ]
    out = _pack_pairs(pairs, rng, max_length=max_length, cls_id=cls_id, sep_id=sep_id)
    return out | {"sentence_order_label": labels}
