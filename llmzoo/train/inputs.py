"""The training loop's input: this process's data shards, and host batches onto the mesh.

Every process builds the same global batches of B rows (see :mod:`llmzoo.data.shards`): it reads
only the shards whose rows its devices hold, and ``jax.make_array_from_process_local_data``
assembles the global array from each process's rows. The validation batches are small and
read whole by every process, which passes on its rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from llmzoo.config import TrainConfig
from llmzoo.data import make_eval_batches, make_lm_pipeline, source_for
from llmzoo.data.records import is_records, make_record_eval_batches, make_record_pipeline
from llmzoo.data.shards import ShardedIterator, position_record, read_position_record
from llmzoo.errors import ConfigError
from llmzoo.models import registry
from llmzoo.train import distributed


@dataclasses.dataclass(frozen=True)
class Input:
    """What the loop reads: ``it`` yields this process's rows of each training batch;
    ``eval_batches`` are whole (global) batches."""

    it: ShardedIterator
    eval_batches: list
    rows: tuple[int, int]  # [lo, hi): this process's rows of every global batch
    sharding: Any  # the batch's NamedSharding
    check: Callable | None  # the model kind's check_batch, if any
    cfg: TrainConfig

    def put(self, local: dict) -> dict:
        """This process's rows of a batch -> the global batch on the mesh."""
        local = {k: np.asarray(v) for k, v in local.items()}
        # ids past a table would be clamped silently on the device (a batch of pairs, whose
        # ids the run's own tokenizer made, has no plain `tokens` to check)
        if self.check is not None and "tokens" in local:
            self.check(local, self.cfg.model)
        rows = self.cfg.batch_size
        return {
            k: jax.make_array_from_process_local_data(self.sharding, v, (rows,) + v.shape[1:])
            for k, v in local.items()
        }

    def put_global(self, batch: dict) -> dict:
        """A whole batch (every process holds all of it) -> the global batch on the mesh."""
        lo, hi = self.rows
        return self.put({k: np.asarray(v)[lo:hi] for k, v in batch.items()})

    def position(self) -> Any:
        """The data position of every shard, for the checkpoint. A collective."""
        mine = {str(s): v for s, v in self.it.get_state().items()}  # JSON keys are strings
        states: dict[int, Any] = {}
        for part in distributed.all_gather_json(mine):
            states |= {int(s): v for s, v in part.items()}
        return position_record(states, self.it.count)

    def restore(self, record: Any) -> None:
        """Moves this process's shards to a checkpoint's data position."""
        self.it.set_state(read_position_record(record, self.it.count))


def shard_layout(cfg: TrainConfig, batch_sharding) -> tuple[tuple[int, int], range, int]:
    """``(rows, shards, count)``: this process's rows of a batch, the shards that fill them, and
    the run's number of shards.

    Raises:
        ConfigError: ``batch_size`` does not split into ``data.shards`` blocks, or a process's
            rows are not whole blocks.
    """
    count = cfg.data.shards or jax.process_count()
    if cfg.batch_size % count:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is not divisible by data.shards={count}; change one"
        )
    lo, hi = rows = distributed.process_rows(batch_sharding, cfg.batch_size)
    block = cfg.batch_size // count
    if lo % block or hi % block:
        raise ConfigError(
            f"data.shards={count} cuts each batch into blocks of {block} rows, but this process "
            f"holds rows {lo}:{hi}; use a multiple of the {jax.process_count()} processes"
        )
    return rows, range(lo // block, hi // block), count


def make_input(cfg: TrainConfig, tokenizer, examples, batch_sharding) -> Input:
    """This process's training iterator and the validation batches of ``cfg``: packed text, or
    the records of a fine-tuning objective (:mod:`llmzoo.data.records`)."""
    rows, shards, count = shard_layout(cfg, batch_sharding)
    check = getattr(registry.get(cfg.model.kind), "check_batch", None)
    if is_records(examples):
        make, eval_batches = _record_input(cfg, examples, count)
    else:
        make, eval_batches = _text_input(cfg, tokenizer, examples, count)
    it = ShardedIterator(lambda s: make(shard=(s, count)), shards, count)
    return Input(it, eval_batches, rows, batch_sharding, check, cfg)


def _record_input(cfg: TrainConfig, examples, count: int):
    d = cfg.data
    train_records = examples.load(d, d.train_split)
    eval_records = examples.load(d, d.eval_split)
    make = functools.partial(
        make_record_pipeline,
        train_records,
        examples,
        batch_size=cfg.batch_size // count,
        seed=cfg.seed,
    )
    eval_batches = make_record_eval_batches(
        eval_records, examples, batch_size=cfg.batch_size, max_batches=cfg.eval_batches
    )
    return make, eval_batches


def _text_input(cfg: TrainConfig, tokenizer, examples, count: int):
    d = cfg.data
    train_src, eval_src = source_for(d, d.train_split), source_for(d, d.eval_split)
    make = functools.partial(
        make_lm_pipeline,
        train_src,
        tokenizer,
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size // count,
        seed=cfg.seed,
        example=examples,
    )
    eval_batches = make_eval_batches(
        eval_src,
        tokenizer,
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        max_batches=cfg.eval_batches,
        example=examples,
    )
    return make, eval_batches
