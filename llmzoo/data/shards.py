"""Data shards: global batches built from independent pipelines, one per shard.

With ``n`` shards, shard ``s`` reads the documents ``s, s + n, s + 2n, ...`` and packs them into
its own rows; rows ``[s * B / n, (s + 1) * B / n)`` of every global batch of B rows are its
rows. Each process of a multi-process run reads only the shards whose rows its devices hold. A run
with the same number of shards therefore sees the same batches on any number of processes (one
process reading all the shards included), and resumes on another process count from the same
data position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from llmzoo.errors import DataError

Batch = dict[str, np.ndarray]
_KEY = "llmzoo_shards"  # marks a checkpointed position of several shards


class ShardedIterator:
    """Batches of the rows of some shards' pipelines, concatenated in shard order.

    Args:
        make: ``make(shard)`` returns shard ``shard``'s checkpointable iterator of ``[B / n, ...]``
            batches (a ``grain.DatasetIterator``).
        shards: the shards this process reads, in order.
        count: ``n``, the number of shards of the run.
    """

    def __init__(self, make: Callable[[int], Iterator[Batch]], shards: Sequence[int], count: int):
        self.shards, self.count = list(shards), count
        self.iterators = [make(s) for s in self.shards]

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        """This process's rows of the next global batch: ``[len(shards) * B / n, ...]``."""
        parts = [next(it) for it in self.iterators]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> dict[int, Any]:
        """The position of each of this process's shards, by shard index."""
        return {s: it.get_state() for s, it in zip(self.shards, self.iterators, strict=True)}

    def set_state(self, states: dict[int, Any]) -> None:
        """Moves each shard to its position in ``states`` (by shard index)."""
        for s, it in zip(self.shards, self.iterators, strict=True):
            it.set_state(states[s])


def position_record(states: dict[int, Any], count: int) -> Any:
    """The JSON a checkpoint holds for the positions of all ``count`` shards.

    One shard's position is stored as it is (as checkpoints always held it); several as
    ``{"llmzoo_shards": [position of shard 0, ...]}``.
    """
    if count == 1:
        return states[0]
    return {_KEY: [states[s] for s in range(count)]}


def read_position_record(record: Any, count: int) -> dict[int, Any]:
    """The per-shard positions of :func:`position_record`'s output.

    Raises:
        DataError: the checkpoint was written with another number of shards.
    """
    found = record[_KEY] if isinstance(record, dict) and _KEY in record else [record]
    if len(found) != count:
        raise DataError(
            f"the checkpoint's data position is for {len(found)} data shard(s) but this run reads "
            f"{count}; set data.shards={len(found)} to resume it"
        )
    return dict(enumerate(found))
