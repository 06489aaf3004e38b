"""Load and save Hugging Face checkpoint directories, one tensor at a time, without torch.

``load`` fills each llmzoo leaf (``layers/attn/wq [L, D, N, H]``) in a preallocated numpy array, one
layer's Hugging Face tensor at a time, then places it on its device (or sharding) and drops the host
copy; peak host memory stays near one copy of the weights plus the largest leaf. ``save`` writes the
safetensors header from shapes alone, then produces and writes each tensor in turn.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from llmzoo.config import ModelConfig
from llmzoo.errors import CheckpointError
from llmzoo.hf import families
from llmzoo.hf.safetensors_io import INDEX_FILE, SINGLE_FILE, SafetensorsDir, write_file
from llmzoo.models import registry
from llmzoo.params import flatten, unflatten

DEFAULT_SHARD_BYTES = 4 * 2**30


def load_config(path: str | os.PathLike) -> ModelConfig:
    """Reads ``config.json`` of a Hugging Face checkpoint directory into a ModelConfig."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(
            f"{path!r} is not a directory; pass a local Hugging Face checkpoint directory"
        )
    file = os.path.join(path, "config.json")
    try:
        with open(file) as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path!r} has no config.json; pass a Hugging Face checkpoint directory"
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file!r} is not valid JSON ({e}); re-download it") from None
    return families.config_from_hf(hf)


def load(
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    shardings: Any = None,
) -> tuple[ModelConfig, dict]:
    """Reads a local Hugging Face checkpoint directory into an llmzoo config and params.

    Reads ``config.json`` and ``model.safetensors`` (or the shards of
    ``model.safetensors.index.json``) tensor by tensor; torch is not needed.

    Args:
        path: the checkpoint directory.
        dtype: params dtype (default float32, as the kind's ``param_specs``);
            e.g. ``jnp.bfloat16`` keeps a bf16 checkpoint at half the memory.
        shardings: optional tree matching the params (e.g. ``sharding.param_shardings``); each leaf
            is placed directly onto its sharding.

    Returns:
        ``(cfg, params)``.

    Raises:
        CheckpointError: unsupported ``model_type``, a missing file or tensor, a tensor whose shape
            disagrees with ``config.json``, or a pickle-only (``.bin``) checkpoint.
    """
    path = os.fspath(path)
    cfg = load_config(path)
    specs = flatten(registry.get(cfg.kind).param_specs(cfg))
    by_leaf = {
        leaf: (entry, j) for entry in families.entries(cfg) for j, leaf in enumerate(entry.leaves)
    }
    flat_shardings = flatten(shardings) if shardings is not None else {}
    used: set[str] = set()
    out = {}
    with SafetensorsDir(path) as st:
        prefix = families.family_map(cfg.family).base_prefix

        def read(name: str, shape: tuple[int, ...]) -> np.ndarray:
            stored = name
            if stored not in st and stored.startswith(prefix):
                stored = stored[len(prefix) :]  # saved from the bare base model
            if stored not in st:
                raise CheckpointError(
                    f"checkpoint {path!r} lacks tensor {name!r} (expected shape "
                    f"{list(shape)}); the weights do not match config.json"
                )
            if st.shape(stored) != shape:
                raise CheckpointError(
                    f"tensor {stored!r} has shape {list(st.shape(stored))} but config.json "
                    f"implies {list(shape)}; the weights do not match config.json"
                )
            used.add(stored)
            return st.read(stored)

        for leaf, spec in specs.items():
            if leaf not in by_leaf:  # a bug in a family map, not in the checkpoint
                raise AssertionError(f"no Hugging Face tensor maps to llmzoo leaf {leaf!r}")
            entry, j = by_leaf[leaf]
            arr = np.empty(spec.shape, np.dtype(dtype or spec.dtype))
            if "{i}" in entry.name:  # stacked layers: the leading axis of the leaf
                for i in range(spec.shape[0]):
                    arr[i] = entry.load(read(entry.name.format(i=i), entry.shape))[j]
            else:
                name = entry.name
                if entry.fallback and name not in st and name.removeprefix(prefix) not in st:
                    name = entry.fallback
                arr[...] = entry.load(read(name, entry.shape))[j]
            out[leaf] = jax.device_put(arr, flat_shardings.get(leaf))
            del arr
        _check_unused(st.names, used, cfg, path)
    return cfg, unflatten(out)


def _check_unused(names, used, cfg, path) -> None:
    optional = families.IGNORED_SUFFIXES + families.family_map(cfg.family).optional
    for name in names:
        if name in used or name.endswith(optional):
            continue
        raise CheckpointError(
            f"checkpoint {path!r} has tensor {name!r} that the {cfg.family} map does not use; "
            "config.json does not describe these weights"
        )


def save(
    path: str | os.PathLike,
    cfg: ModelConfig,
    params: dict,
    *,
    dtype: Any = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    extra_config: dict | None = None,
) -> None:
    """Writes a Hugging Face checkpoint directory that ``from_pretrained`` loads.

    Writes ``config.json`` and ``model.safetensors``, or ``model-0000k-of-0000n.safetensors``
    shards with ``model.safetensors.index.json`` when the weights exceed ``max_shard_bytes``.

    Args:
        path: output directory (created).
        cfg: the model config; its family picks the Hugging Face architecture.
        params: the params tree (jax or numpy arrays, possibly sharded).
        dtype: tensor dtype in the files (default: each param's own dtype).
        max_shard_bytes: the largest shard.
        extra_config: keys merged into ``config.json`` (e.g. ``eos_token_id``).

    Raises:
        ConfigError: ``cfg`` uses a switch its Hugging Face family lacks.
        CheckpointError: ``params`` does not match ``cfg``.
    """
    path = os.fspath(path)
    hf_cfg = families.config_to_hf(cfg)
    flat = flatten(params)
    specs = flatten(registry.get(cfg.kind).param_specs(cfg))
    for leaf, spec in specs.items():
        got = getattr(flat.get(leaf), "shape", None)
        if got != spec.shape:
            raise CheckpointError(
                f"param {leaf!r} has shape {None if got is None else list(got)} but the config "
                f"implies {list(spec.shape)}; pass the params that belong to this config"
            )
    host: dict[str, np.ndarray] = {}

    def leaf_array(leaf: str) -> np.ndarray:
        # One leaf on the host at a time: fused tensors (q, k, v) need up to three.
        if leaf not in host:
            if len(host) >= 3:
                host.pop(next(iter(host)))
            host[leaf] = np.asarray(flat[leaf])
        return host[leaf]

    tensors = []
    for entry in families.entries(cfg):
        out_dtype = np.dtype(dtype or flat[entry.leaves[0]].dtype)
        n_layers = specs[entry.leaves[0]].shape[0]
        layers = range(n_layers) if "{i}" in entry.name else [None]
        for i in layers:

            def produce(entry=entry, i=i):
                parts = [leaf_array(leaf) for leaf in entry.leaves]
                return entry.save(*(p if i is None else p[i] for p in parts))

            name = entry.name if i is None else entry.name.format(i=i)
            tensors.append((name, entry.shape, out_dtype, produce))

    os.makedirs(path, exist_ok=True)
    shards = _split(tensors, max_shard_bytes)
    for old in os.listdir(path):  # stale weights of an earlier save would confuse loaders
        if old.endswith(".safetensors") or old == INDEX_FILE:
            os.remove(os.path.join(path, old))
    if len(shards) == 1:
        write_file(os.path.join(path, SINGLE_FILE), shards[0])
    else:
        weight_map, total = {}, 0
        for k, shard in enumerate(shards):
            file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            write_file(os.path.join(path, file), shard)
            for name, shape, dt, _ in shard:
                weight_map[name] = file
                total += int(np.prod(shape)) * dt.itemsize
        with open(os.path.join(path, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    host.clear()
    float_dtype = np.dtype(dtype or next(iter(flat.values())).dtype)
    hf_cfg["dtype"] = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(
        float_dtype.name, "float32"
    )
    hf_cfg |= extra_config or {}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2, sort_keys=True)


def _split(tensors: list, max_bytes: int) -> list[list]:
    shards: list[list] = [[]]
    size = 0
    for t in tensors:
        nbytes = int(np.prod(t[1])) * t[2].itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    return shards


__all__ = ["load", "load_config", "save"]
