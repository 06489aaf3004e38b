"""Device meshes, the one logical-axis rules table, named strategies, and ``constrain``.

Params and activations are annotated with *logical* axis names; ``RULES`` maps each to mesh axes.
Change parallelism by choosing a strategy (which sets the mesh shape) or overriding rules, never
the model code.

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel with sharded params and optimizer
state, ZeRO-3 style), ``tensor`` (Megatron-style tensor parallel over heads and MLP width). Mesh
axes of size 1 drop out of every spec, so one table serves every strategy:

==========  ==================  ============================================================
strategy    mesh (n devices)    what is sharded
==========  ==================  ============================================================
dp          (n, 1, 1)           the batch; params and optimizer state replicated
fsdp        (1, n, 1)           the batch, and params and optimizer state over ``embed``
tp          (1, 1, n)           heads, MLP width and vocabulary; the batch is replicated
fsdp+tp     (1, n / t, t)       both; ``t`` is ``mesh_tensor``
==========  ==================  ============================================================
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from llmzoo.config import STRATEGIES
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

# strategy -> mesh sizes (data, fsdp, tensor): -1 takes the remaining devices, None is
# ``mesh_tensor``. Explicit ``mesh_*`` sizes override these.
STRATEGY_MESHES: dict[str, tuple[int | None, int, int | None]] = {
    "dp": (-1, 1, 1),
    "fsdp": (1, -1, 1),
    "tp": (1, 1, -1),
    "fsdp+tp": (1, -1, None),
}
assert tuple(STRATEGY_MESHES) == STRATEGIES  # the config validates the names

# Param dims that must divide their mesh axes: replicating them would quietly undo tensor
# parallelism (the whole layer on every device). Other dims (``embed`` under fsdp, ``kv_heads``
# fewer than the tensor axis, as in GQA) are replicated when they do not divide: that costs memory,
# not correctness. The value names the config key to change.
STRICT_AXES = {"heads": "model.n_heads", "mlp": "model.d_ff", "vocab": "model.vocab_size"}

_rules: contextvars.ContextVar[tuple] = contextvars.ContextVar("llmzoo_rules", default=RULES)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> jax.sharding.Mesh:
    """Creates a ``('data', 'fsdp', 'tensor')`` mesh with Auto axis types.

    Args:
        data, fsdp, tensor: sizes of each axis; one of them may be -1 to take the remaining
            devices.
        devices: the devices to use (default: all).

    Returns:
        A ``jax.sharding.Mesh``.

    Raises:
        ConfigError: the sizes do not fit the devices.
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


def strategy_mesh(
    strategy: str = "dp", data=None, fsdp=None, tensor=None, devices=None
) -> jax.sharding.Mesh:
    """The mesh of a named strategy (see the module table) over all ``devices``.

    Args:
        strategy: ``dp``, ``fsdp``, ``tp`` or ``fsdp+tp``.
        data, fsdp, tensor: explicit axis sizes (``mesh_data`` ...); each one given (not None)
            replaces the strategy's size for that axis. ``fsdp+tp`` needs ``tensor``.
        devices: the devices to use (default: all).

    Raises:
        ConfigError: an unknown strategy, or sizes that do not fit the devices.
    """
    if strategy not in STRATEGY_MESHES:
        raise ConfigError(f"strategy={strategy!r} is unknown; use one of {', '.join(STRATEGIES)}")
    given = (data, fsdp, tensor)
    shape = [
        g if g is not None else s for g, s in zip(given, STRATEGY_MESHES[strategy], strict=True)
    ]
    if shape[2] is None:
        raise ConfigError(
            f"strategy={strategy!r} needs mesh_tensor, the tensor-parallel size (e.g. "
            "mesh_tensor=2); the fsdp axis takes the remaining devices"
        )
    return make_mesh(*shape, devices=devices)


def resolve_rules(overrides=()) -> tuple[tuple[str, Any], ...]:
    """``RULES`` with ``overrides`` (``(logical name, mesh axes)`` pairs) replacing entries.

    Raises:
        ConfigError: an unknown logical name or mesh axis, or a mesh axis named twice.
    """
    table = dict(RULES)
    for name, target in dict(overrides).items():
        if name not in table:
            raise ConfigError(
                f"sharding_rules.{name}: unknown logical axis; use one of {', '.join(table)}"
            )
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        bad = [a for a in axes if a not in MESH_AXES]
        if bad or len(set(axes)) != len(axes):
            raise ConfigError(
                f"sharding_rules.{name}={target!r}: use null (replicated) or distinct mesh axes "
                f"from {', '.join(MESH_AXES)}"
            )
        table[name] = None if not axes else axes[0] if len(axes) == 1 else axes
    return tuple(table.items())


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh, rules=RULES) -> Iterator[None]:
    """``jax.set_mesh(mesh)`` plus the rules that :func:`constrain` applies while tracing.

    Rules are read when a jitted function is traced, so trace (first call) inside this block.
    """
    token = _rules.set(tuple(rules))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _rules.reset(token)


def _axes(target) -> tuple[str, ...]:
    return (target,) if isinstance(target, str) else tuple(target or ())


def logical_to_spec(logical_axes, mesh=None, rules=RULES) -> PartitionSpec:
    """Maps logical axis names to a ``PartitionSpec``.

    A mesh axis is used at most once per array (a later dimension naming it again is left
    unsharded: activations ``('batch', 'seq', 'embed')`` keep ``fsdp`` on the batch); mesh axes of
    size 1 are dropped (if ``mesh`` is given), so the same rules work on one device and on many.
    """
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in logical_axes:
        axes = _axes(table.get(name) if name is not None else None)
        axes = tuple(
            a for a in axes if a not in used and (mesh is None or mesh.shape.get(a, 1) > 1)
        )
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def _axis_size(mesh, entry) -> int:
    return int(np.prod([mesh.shape[a] for a in _axes(entry)]))


def _param_spec(path, s, mesh, rules) -> PartitionSpec:
    """One param's spec: strict on colliding axes and on :data:`STRICT_AXES` dims."""
    where = jax.tree_util.keystr(path, simple=True, separator=".")
    logical = s.logical_axes or (None,) * len(s.shape)
    table, seen = dict(rules), {}
    for name in logical:
        for axis in _axes(table.get(name)) if name is not None else ():
            if axis in seen and mesh.shape[axis] > 1:
                raise ConfigError(
                    f"sharding rules map both {seen[axis]!r} and {name!r} of param {where} to "
                    f"mesh axis {axis!r}; change sharding_rules so each names it once"
                )
            seen[axis] = name
    spec = list(logical_to_spec(logical, mesh, rules))
    for i, entry in enumerate(spec):
        if entry is None or s.shape[i] % _axis_size(mesh, entry) == 0:
            continue
        if logical[i] in STRICT_AXES:
            raise ConfigError(
                f"{STRICT_AXES[logical[i]]}={s.shape[i]} is not divisible by the {entry} axis "
                f"({_axis_size(mesh, entry)}) that shards {logical[i]!r} (param {where}); choose "
                "a multiple of it, a smaller mesh_tensor, or another strategy"
            )
        spec[i] = None
    return PartitionSpec(*spec)


def param_shardings(specs, mesh, rules=RULES):
    """Maps a ParamSpec tree to a tree of ``NamedSharding`` on ``mesh``.

    A dimension not divisible by its mesh axes is replicated, unless it is one of
    :data:`STRICT_AXES`.

    Raises:
        ConfigError: a heads, MLP or vocabulary size not divisible by its mesh axes, or rules
            that shard two dimensions of one param over the same mesh axis.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, s: NamedSharding(mesh, _param_spec(path, s, mesh, rules)),
        specs,
        is_leaf=is_spec,
    )


def activation_spec(shape: tuple[int, ...], logical_axes: tuple[str | None, ...]):
    """The ``PartitionSpec`` of an activation of ``shape`` under the current mesh and rules.

    Returns None outside ``jax.set_mesh(...)``. A dimension that does not divide its mesh axes
    gets None (unsharded). The rules are those of the enclosing :func:`use_mesh` (default
    :data:`RULES`).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    spec = logical_to_spec(logical_axes, mesh, _rules.get())
    return PartitionSpec(
        *(
            None if entry is None or dim % _axis_size(mesh, entry) else entry
            for dim, entry in zip(shape, spec, strict=False)
        )
    )


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
    """Constrains an activation's sharding by logical names, if a mesh is set.

    Outside ``jax.set_mesh(...)`` (single-device use, tests) this is the identity. The rules are
    those of the enclosing :func:`use_mesh` (default :data:`RULES`). Call it at block boundaries
    only. A dimension that does not divide its mesh axes leaves ``x`` unconstrained.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, mesh, _rules.get())
    for dim, entry in zip(x.shape, spec, strict=False):
        if entry is not None and dim % _axis_size(mesh, entry):
            return x
    return jax.lax.with_sharding_constraint(x, spec)


def take_rows(table: jax.Array, ids: jax.Array, row_axis: str | None = "vocab") -> jax.Array:
    """``table[ids]`` (an embedding lookup) with the table's columns gathered first.

    ``table: [R, D]`` sharded ``(row_axis, 'embed')``, ``ids: [B, T]`` -> ``[B, T, D]``. With the
    ``embed`` columns still split over ``fsdp`` while ``ids`` are batch-split over ``fsdp`` too,
    XLA's partitioner cannot reconcile the two layouts of the gather and falls back to replicating
    it ("Involuntary full rematerialization"). Gathering the columns first is the all-gather FSDP
    does for every weight anyway; the rows stay split over ``row_axis``.
    """
    return constrain(table, (row_axis, None))[ids]


def batch_sharding(mesh, ndim: int = 2, rules=RULES) -> NamedSharding:
    """Sharding for an input batch ``[B, T, ...]``: the ``batch`` rule (data and fsdp axes)."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), mesh, rules))


def batch_shards(mesh, rules=RULES) -> int:
    """How many ways the batch dimension is split (its micro-batch must divide by this)."""
    entry = logical_to_spec(("batch",), mesh, rules)[0]
    return 1 if entry is None else _axis_size(mesh, entry)
