"""Record datasets: one example per record (a labelled text, an instruction, a preference pair).

Fine-tuning objectives read records rather than a stream of text. Their examples object (see
:class:`RecordExamples`) loads a split's records and turns each into one example; this module
shuffles, shards, packs and batches them with Grain, so that training resumes exactly from the
iterator state a checkpoint stores, as the text pipeline does (:mod:`llmzoo.data.pipeline`).

- ``pack = False``: every example has fixed shapes (padded to ``row_len``) and a batch stacks B
  of them.
- ``pack = True``: every value of an example is a 1-D array of the example's own length; Grain's
  ``ConcatThenSplitIterDataset`` packs consecutive examples into rows of ``row_len`` (adding
  ``<key>_segment_ids``, 1, 2, ... per example, and ``<key>_positions``; an example longer than a
  row is split), and ``examples.finish(row)`` turns a packed row into the final example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import grain
import numpy as np

from llmzoo.config import DataConfig
from llmzoo.data.pipeline import padded_batches
from llmzoo.errors import DataError

RECORDS_READY = True  # the fine-tuning core has landed (helpers test for it)


class RecordExamples(Protocol):
    """What a record-based objective provides (``records = True`` marks it).

    Optional hooks: ``run_files() -> {name: text}`` (files the loop writes into the run
    directory, e.g. ``labels.json``) and ``baselines(eval_batches) -> dict`` (reference scores
    added to the run's summary, e.g. ``majority_accuracy``).
    """

    records: bool
    pack: bool
    row_len: int

    def load(self, data: DataConfig, split: str) -> Sequence[dict]:
        """The records of ``split``."""

    def __call__(self, record: dict) -> dict[str, np.ndarray]:
        """One example (fixed shapes; 1-D of the example's length when ``pack``)."""


def is_records(examples) -> bool:
    """Whether ``examples`` reads records (:class:`RecordExamples`) rather than packed text."""
    return bool(getattr(examples, "records", False))


def _examples(records: Sequence[dict], examples, *, seed, shuffle, num_epochs, shard):
    """The unbatched Grain dataset of ``examples(record)`` over ``shard = (index, count)``."""
    index, count = shard
    if not 0 <= index < count or len(records) < count:
        raise DataError(
            f"shard {index} of {count} does not exist for {len(records)} records; use fewer "
            "data shards (data.shards)"
        )
    ds = grain.MapDataset.source(records)
    if count > 1:
        ds = ds[index::count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs).map(examples).to_iter_dataset()
    if not examples.pack:
        return ds
    keys = examples(records[0]).keys()
    length = {k: examples.row_len for k in keys}
    ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct=length)
    return ds.map(examples.finish)


def _check(records: Sequence[dict], batch_size: int, split: str) -> None:
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size} must be >= 1")
    if len(records) == 0:
        raise DataError(f"the {split!r} split has no records; check the dataset and split")


def make_record_pipeline(
    records: Sequence[dict],
    examples,
    *,
    batch_size: int,
    seed: int,
    shard: tuple[int, int] = (0, 1),
) -> grain.DatasetIterator:
    """A checkpointable iterator of training batches: records shuffled anew each epoch (by
    ``seed``), repeated forever, turned into examples, packed if ``examples.pack``, batched.

    Args:
        records: the training split's records (``examples.load``).
        examples: the objective's :class:`RecordExamples`.
        batch_size: B, examples (or packed rows) per batch.
        seed: seed of the shuffle.
        shard: ``(index, count)``: read the records ``index, index + count, ...`` only.

    Returns:
        A ``grain.DatasetIterator`` of dicts of ``[B, ...]`` arrays; ``get_state``/``set_state``
        resume it exactly.
    """
    _check(records, batch_size, "train")
    ds = _examples(records, examples, seed=seed, shuffle=True, num_epochs=None, shard=shard)
    return iter(ds.batch(batch_size, drop_remainder=True))


def make_record_eval_batches(
    records: Sequence[dict], examples, *, batch_size: int, max_batches: int | None = None
) -> list[dict[str, np.ndarray]]:
    """One deterministic pass over ``records`` (in order), as at most ``max_batches`` batches
    of B; the last is padded with all-zero rows, which every objective's masks skip."""
    _check(records, batch_size, "validation")
    ds = _examples(records, examples, seed=0, shuffle=False, num_epochs=1, shard=(0, 1))
    return padded_batches(ds, batch_size, max_batches)
