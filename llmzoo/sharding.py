"""Device meshes and the one logical-axis rules table.

Params and activations are annotated with *logical* axis names; ``RULES`` maps each to mesh axes.
Change parallelism by changing the mesh shape (or this table), never the model code.

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel with sharded params and optimizer
state, ZeRO-3 style), ``tensor`` (Megatron-style tensor parallel over heads and MLP width).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from llmzoo.errors import ConfigError
from llmzoo.params import is_spec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None for replicated)
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> jax.sharding.Mesh:
    """Creates a ``('data', 'fsdp', 'tensor')`` mesh with Auto axis types.

    Args:
        data, fsdp, tensor: sizes of each axis; one of them may be -1 to take the remaining
            devices.
        devices: the devices to use (default: all).

    Returns:
        A ``jax.sharding.Mesh``.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = [data, fsdp, tensor]
    if shape.count(-1) > 1:
        raise ConfigError(
            f"mesh_data={data}, mesh_fsdp={fsdp}, mesh_tensor={tensor}: at most one may be -1"
        )
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ConfigError(
                f"mesh_data={data} x mesh_fsdp={fsdp} x mesh_tensor={tensor} does not divide the "
                f"{len(devices)} devices; choose sizes whose product divides {len(devices)}"
            )
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ConfigError(
            f"mesh_data={shape[0]} x mesh_fsdp={shape[1]} x mesh_tensor={shape[2]} needs "
            f"{int(np.prod(shape))} devices but this machine has {len(devices)}; use sizes whose "
            f"product is {len(devices)} (mesh_data=-1 takes the rest)"
        )
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(logical_axes, mesh=None, rules=RULES) -> PartitionSpec:
    """Maps logical axis names to a ``PartitionSpec``.

    A mesh axis is used at most once per array; mesh axes of size 1 are dropped (if ``mesh`` is
    given), so the same rules work on one device and on many.
    """
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in logical_axes:
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(
            a for a in axes if a not in used and (mesh is None or mesh.shape.get(a, 1) > 1)
        )
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def param_shardings(specs, mesh, rules=RULES):
    """Maps a ParamSpec tree to a tree of ``NamedSharding`` on ``mesh``.

    A dimension whose size is not divisible by its mesh axes is replicated instead.
    """

    def one(s):
        axes = s.logical_axes or (None,) * len(s.shape)
        spec = list(logical_to_spec(axes, mesh, rules))
        spec += [None] * (len(s.shape) - len(spec))
        for i, entry in enumerate(spec):
            if entry is not None:
                names = (entry,) if isinstance(entry, str) else entry
                if s.shape[i] % int(np.prod([mesh.shape[a] for a in names])):
                    spec[i] = None
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(one, specs, is_leaf=is_spec)


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
    """Constrains an activation's sharding by logical names, if a mesh is set.

    Outside ``jax.set_mesh(...)`` (single-device use, tests) this is the identity. Call it at block
    boundaries only.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, mesh)
    for dim, entry in zip(x.shape, spec, strict=False):
        if entry is not None:
            names = (entry,) if isinstance(entry, str) else entry
            if dim % int(np.prod([mesh.shape[a] for a in names])):
                return x
    return jax.lax.with_sharding_constraint(x, spec)


def batch_sharding(mesh, ndim: int = 2) -> NamedSharding:
    """Sharding for an input batch ``[B, T, ...]``: batch over data and fsdp axes."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), mesh))
