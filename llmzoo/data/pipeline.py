"""Grain pipelines that turn text documents into packed, batched language-model examples.

Other objectives pack rows of their own length and turn each into their own example (an
``example`` callable, see :mod:`llmzoo.objectives.examples`); the default, described below, is
next-token prediction.

Packing (greedy concatenate-then-split, ``grain.experimental.ConcatThenSplitIterDataset``):
documents are tokenized, ``eos`` is appended, and the token stream is cut into rows of
``seq_len + 1`` tokens. A row is then split GPT-style into ``tokens = row[:-1]`` and
``targets = row[1:]``, so every one of the ``T = seq_len`` input positions can have a target.
A document that does not fit is split; its remainder starts the next row as a new segment with
positions restarting at 0 (the last token of a row is only ever a target, never an input).

Every batch is a dict of numpy arrays, with B = batch_size and T = seq_len:

- ``tokens [B, T] int32``: input ids; 0 (pad) after the last document of a finite stream.
- ``targets [B, T] int32``: the next token of the same segment, else 0.
- ``segment_ids [B, T] int32``: 1, 2, 3, ... for the segments of a row, 0 for padding.
- ``positions [B, T] int32``: position within the segment, 0 at each segment start.
- ``loss_mask [B, T] float32``: 1 where ``targets`` is the real next token of the same
  segment; 0 on padding and on the last token of a segment (typically its ``eos``).
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np
from absl import flags

from llmzoo.data.tokenizer import Tokenizer
from llmzoo.errors import DataError

Batch = dict[str, np.ndarray]


class _Tokenize:
    """Maps a document to ``{'tokens': [L] int32}``, with ``eos`` appended if asked.

    A class rather than a closure so that Grain worker processes can pickle it.
    """

    def __init__(self, tokenizer: Tokenizer, add_eos: bool):
        self.tokenizer = tokenizer
        self.suffix = [tokenizer.eos_id] if add_eos else []

    def __call__(self, text: str) -> dict[str, np.ndarray]:
        return {"tokens": np.asarray(self.tokenizer.encode(text) + self.suffix, dtype=np.int32)}


def _is_not_empty(example: dict[str, np.ndarray]) -> bool:
    return len(example["tokens"]) > 0


def lm_example(packed: dict[str, np.ndarray]) -> Batch:
    """Splits one packed row of T + 1 tokens into inputs and next-token targets, each [T]."""
    row, seg, pos = packed["tokens"], packed["tokens_segment_ids"], packed["tokens_positions"]
    same_segment = (seg[:-1] == seg[1:]) & (seg[:-1] != 0)
    return {
        "tokens": row[:-1],
        "targets": np.where(same_segment, row[1:], 0).astype(np.int32),
        "segment_ids": seg[:-1],
        "positions": pos[:-1],
        "loss_mask": same_segment.astype(np.float32),
    }


def _check(
    source: Sequence[str], tokenizer: Tokenizer, seq_len: int, batch_size: int, add_eos: bool
):
    if seq_len < 1 or batch_size < 1:
        raise DataError(f"seq_len={seq_len} and batch_size={batch_size} must both be >= 1")
    if len(source) == 0:
        raise DataError("the text source is empty; check the dataset name and split")
    if add_eos and tokenizer.eos_id < 0:
        raise DataError(
            f"tokenizer {tokenizer.path!r} has no eos id; train one with `llmzoo tokenizer train`"
        )


def _packed_rows(
    source: Sequence[str],
    tokenizer: Tokenizer,
    *,
    row_len: int,
    example,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    add_eos: bool,
    worker_count: int,
    shard: tuple[int, int] = (0, 1),
) -> grain.IterDataset:
    """The unbatched pipeline: an IterDataset of ``example(row)`` for packed rows of
    ``row_len`` tokens (``example(row, rng)`` when ``example.random`` is true), over the documents
    ``index, index + count, ...`` of ``source`` for ``shard = (index, count)``."""
    ds = grain.MapDataset.source(source)
    index, count = shard
    if count > 1:  # before the shuffle: the shards stay disjoint in every epoch
        ds = ds[index::count]
    if shuffle:
        ds = ds.shuffle(seed=seed)  # Reshuffled differently (but deterministically) each epoch.
    ds = ds.repeat(num_epochs).map(_Tokenize(tokenizer, add_eos)).to_iter_dataset()
    if worker_count > 0:
        if not flags.FLAGS.is_parsed():
            # Grain's worker processes read absl flags; outside an absl app nobody parsed them.
            flags.FLAGS.mark_as_parsed()
        # Before packing, so that the output does not depend on the number of workers.
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    ds = ds.filter(_is_not_empty)  # Empty documents would leave gaps in the segment ids.
    ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": row_len})
    if getattr(example, "random", False):
        return ds.random_map(example, seed=seed)
    return ds.map(example)


def make_lm_pipeline(
    source: Sequence[str],
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    add_eos: bool = True,
    worker_count: int = 0,
    example=None,
    shard: tuple[int, int] = (0, 1),
) -> grain.DatasetIterator:
    """Returns a checkpointable iterator of packed language-model batches (see module docstring).

    Resume exactly with ``state = it.get_state()`` and, on a fresh iterator built with the same
    arguments, ``it.set_state(state)``. A final partial batch of a finite stream is dropped.

    Args:
        source: random-access documents, e.g. from :func:`llmzoo.data.build_source`.
        tokenizer: tokenizer whose ``eos_id`` ends every document when ``add_eos``.
        seq_len: T, the length of a row.
        batch_size: B, rows per batch.
        seed: seed of the document shuffle.
        shuffle: shuffle documents (a new order each epoch).
        num_epochs: passes over the source; None repeats forever.
        add_eos: append ``eos`` to every document.
        worker_count: Grain worker processes for tokenization; 0 tokenizes in this process.
        example: turns a packed row into an example (default :func:`lm_example`); an object with
            a ``row_len`` (the packed length) and, if ``example.random``, called as
            ``example(row, rng)`` (e.g. :mod:`llmzoo.objectives.examples`).
        shard: ``(index, count)``: read only the documents ``index, index + count, ...`` (see
            :mod:`llmzoo.data.shards`); ``(0, 1)`` reads them all.

    Returns:
        A ``grain.DatasetIterator`` yielding dicts of ``[B, ...]`` arrays.
    """
    _check(source, tokenizer, seq_len, batch_size, add_eos)
    if not 0 <= shard[0] < shard[1] or len(source) < shard[1]:
        raise DataError(
            f"shard {shard[0]} of {shard[1]} does not exist for a source of {len(source)} "
            "documents; use fewer data shards (data.shards)"
        )
    rows = _packed_rows(
        source,
        tokenizer,
        row_len=getattr(example, "row_len", seq_len + 1),
        example=example or lm_example,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        add_eos=add_eos,
        worker_count=worker_count,
        shard=shard,
    )
    return iter(rows.batch(batch_size, drop_remainder=True))


def pad_batch(batch: Batch, batch_size: int) -> Batch:
    """Pads the leading dimension of every array with zero rows up to ``batch_size``."""
    missing = batch_size - len(next(iter(batch.values())))
    return {k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}


def make_eval_batches(
    source: Sequence[str],
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
    example=None,
) -> list[Batch]:
    """Returns one deterministic pass over ``source`` as batches of the training format.

    Documents are read in order (no shuffle), end with ``eos`` and are packed as in training.
    The last batch is padded with all-zero rows (``loss_mask`` 0), so every batch is ``[B, T]``.

    Args:
        source: random-access documents.
        tokenizer: the tokenizer used in training.
        seq_len: T, the length of a row.
        batch_size: B, rows per batch.
        max_batches: stop after this many batches; None reads the whole source.
        example: as in :func:`make_lm_pipeline`; random corruption is drawn from seed 0, so the
            evaluation set is the same every time.

    Returns:
        A list of dicts of ``[B, ...]`` arrays.
    """
    _check(source, tokenizer, seq_len, batch_size, add_eos=True)
    rows = _packed_rows(
        source,
        tokenizer,
        row_len=getattr(example, "row_len", seq_len + 1),
        example=example or lm_example,
        seed=0,
        shuffle=False,
        num_epochs=1,
        add_eos=True,
        worker_count=0,
    )
    return padded_batches(rows, batch_size, max_batches)


def padded_batches(rows: grain.IterDataset, batch_size: int, max_batches: int | None) -> list:
    """At most ``max_batches`` batches of ``rows``, the last padded with zero rows to B."""
    batches = []
    for batch in rows.batch(batch_size, drop_remainder=False):
        if max_batches is not None and len(batches) >= max_batches:
            break
        batches.append(pad_batch(batch, batch_size))
    return batches
