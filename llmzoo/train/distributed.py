"""Multi-process training: joining ``jax.distributed``, and the few steps that need every process.

One ``llmzoo train`` process runs per host (per GPU node, per TPU VM worker). The processes join
one JAX distributed system, after which ``jax.devices()`` lists the devices of all of them and one
mesh spans them all; each process feeds its own rows of every batch
(:mod:`llmzoo.train.inputs`), Orbax saves each checkpoint collectively, and only process 0
writes the run directory's other files and prints.

How the processes find each other (:func:`initialize_from_env`), checked in this order:

- ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``: set them on each process of a GPU cluster, or on one machine to test;
- a Cloud TPU VM (``TPU_WORKER_HOSTNAMES`` or ``/dev/accel0`` / ``/dev/vfio``), a Slurm job step
  of more than one task, or an Open MPI launch of more than one rank: JAX detects the rest;
- otherwise a single process, as before.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from llmzoo.errors import ConfigError

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _env_int(name: str, lo: int, hi: int | None = None) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < lo or (hi is not None and value >= hi):
        bound = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi})"
        raise ConfigError(f"{name}={raw!r} is not {bound}; set it on every process")
    return value


def _cluster_detected() -> bool:
    """A launcher JAX can read the process layout from: Cloud TPU, Slurm or Open MPI."""
    env = os.environ
    tpu_chips = glob.glob("/dev/accel0") + glob.glob("/dev/vfio/[0-9]*")
    tpu = "TPU_WORKER_HOSTNAMES" in env or bool(tpu_chips)
    slurm = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_ID" in env
    mpi = int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
    return tpu or slurm or mpi


def initialize_from_env() -> bool:
    """Joins the JAX distributed system when the environment asks for it (see the module).

    Must run before anything touches a JAX backend (``jax.devices()``, any computation).

    Returns:
        True if this process is one of several.

    Raises:
        ConfigError: the ``JAX_*`` variables are incomplete or not integers.
    """
    given = [name for name in _ENV if os.environ.get(name)]
    if given:
        if len(given) < len(_ENV):
            missing = ", ".join(name for name in _ENV if name not in given)
            raise ConfigError(
                f"{', '.join(given)} set but not {missing}; set all three on every process "
                "(JAX_COORDINATOR_ADDRESS=host:port of process 0)"
            )
        n = _env_int("JAX_NUM_PROCESSES", 1)
        jax.distributed.initialize(
            os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=n,
            process_id=_env_int("JAX_PROCESS_ID", 0, n),
        )
    elif _cluster_detected():
        jax.distributed.initialize()
    return jax.process_count() > 1


def is_primary() -> bool:
    """True on process 0, the one that writes run files and prints."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def process_rows(batch_sharding, rows: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of a ``[rows, ...]`` global batch that this process's devices hold.

    Raises:
        ConfigError: the process's rows are not one contiguous block (a mesh whose batch axes
            interleave processes).
    """
    index = batch_sharding.addressable_devices_indices_map((rows,))
    blocks = sorted({s[0].indices(rows)[:2] for s in index.values()})
    lo, hi = blocks[0][0], blocks[-1][1]
    if sum(b - a for a, b in blocks) != hi - lo:
        raise ConfigError(
            f"this process holds rows {blocks} of each batch, not one block; order the mesh so "
            "that each process's devices are adjacent on the batch axes"
        )
    return lo, hi


def all_gather_json(obj: Any) -> list:
    """``obj`` (JSON-serialisable) from every process, in process order. A collective: every
    process must call it."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    pairs = zip(rows, sizes.ravel(), strict=True)
    return [json.loads(bytes(row[:n]).decode("utf-8")) for row, n in pairs]


def host_params(params):
    """The whole of every array of ``params`` as numpy, also when it spans processes. A
    collective when there are several processes."""
    if jax.process_count() == 1:
        return jax.device_get(params)
    return multihost_utils.process_allgather(params, tiled=True)
