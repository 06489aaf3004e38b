"""Abstract parameter declarations and their sharded materialisation.

A model declares its parameters as a nested dict of :class:`ParamSpec` leaves. From that tree we
derive shapes (``abstract_params``), shardings (``llmzoo.sharding.param_shardings``) and finally
arrays (``init_params``), which are created inside ``jax.jit`` with ``out_shardings`` so that no
host ever holds a full unsharded copy of a large model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class _Normal:
    std: float

    def __call__(self, key, shape, dtype):
        return (self.std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def normal(std: float = 0.02) -> Initializer:
    """Returns an initializer drawing from N(0, std^2).

    Initializers are hashable values (equal for equal ``std``), so equal spec trees share one
    compiled ``init_params``.
    """
    return _Normal(float(std))


def zeros(key, shape, dtype):
    """Initializer that returns zeros."""
    del key
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype):
    """Initializer that returns ones."""
    del key
    return jnp.ones(shape, dtype)


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """Abstract declaration of one parameter leaf.

    Attributes:
        shape: the array shape.
        dtype: the storage dtype.
        logical_axes: one logical-axis name (or None) per dimension, e.g. ``('embed', 'mlp')``.
        init: ``init(key, shape, dtype) -> array``.
    """

    shape: tuple[int, ...]
    dtype: Any = jnp.float32
    logical_axes: tuple[str | None, ...] = ()
    init: Initializer = normal(0.02)

    def __post_init__(self):
        if self.logical_axes and len(self.logical_axes) != len(self.shape):
            raise ValueError(
                f"ParamSpec logical_axes {self.logical_axes} has {len(self.logical_axes)} names "
                f"for shape {self.shape}; give one name (or None) per dimension"
            )


def is_spec(x: Any) -> bool:
    """True for a :class:`ParamSpec` leaf (use as ``is_leaf`` in tree maps)."""
    return isinstance(x, ParamSpec)


def stack(specs: Any, n: int, axis_name: str = "layers") -> Any:
    """Adds a leading axis of size ``n`` named ``axis_name`` to every spec in a tree.

    Used to stack per-layer params for ``lax.scan``. Each layer is drawn independently.
    """

    def one(s: ParamSpec) -> ParamSpec:
        axes = s.logical_axes or (None,) * len(s.shape)
        return ParamSpec((n, *s.shape), s.dtype, (axis_name, *axes), _Stacked(s.init))

    return jax.tree.map(one, specs, is_leaf=is_spec)


@dataclasses.dataclass(frozen=True)
class _Stacked:
    """Draws each slice of the leading axis independently with ``inner``."""

    inner: Initializer

    def __call__(self, key, shape, dtype):
        keys = jax.random.split(key, shape[0])
        return jax.vmap(lambda k: self.inner(k, shape[1:], dtype))(keys)


def with_dtype(specs: Any, dtype: Any) -> Any:
    """``specs`` with every leaf's storage dtype set to ``dtype`` (a model's ``param_dtype``)."""
    dtype = jnp.dtype(dtype)
    return jax.tree.map(lambda s: dataclasses.replace(s, dtype=dtype), specs, is_leaf=is_spec)


def abstract_params(specs: Any) -> Any:
    """Maps a spec tree to a tree of ``jax.ShapeDtypeStruct``."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), specs, is_leaf=is_spec)


def _path_key(key: jax.Array, path) -> jax.Array:
    return jax.random.fold_in(key, _path_salt(path))


def init_params(key: jax.Array, specs: Any, shardings: Any = None) -> Any:
    """Materialises a spec tree into arrays under ``jax.jit``.

    Each leaf's key is ``fold_in(key, crc32(path))``, so adding a parameter does not change the
    initial values of the others. Normal-initialised leaves of at most ``TOGETHER_MAX_SIZE``
    scalars are drawn together in a few vmapped random programs, with the same values as drawn
    one by one (see ``_Draws``): a small model's init compiles in a fraction of the time.

    Args:
        key: a PRNG key.
        specs: nested dict of :class:`ParamSpec`.
        shardings: optional matching tree of ``jax.sharding.Sharding`` used as ``out_shardings``.

    Returns:
        The params pytree (nested dict of arrays).
    """

    leaves, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
    flat_shardings = None
    if shardings is not None:
        s_leaves, s_def = jax.tree.flatten(shardings)
        flat_shardings = (s_def, tuple(s_leaves))
    args = (treedef, tuple(leaves), flat_shardings)
    try:
        fn = _compiled_init(*args)
    except TypeError:  # an unhashable custom initializer: build without the cache
        fn = _compiled_init.__wrapped__(*args)
    return fn(key)


@functools.lru_cache(maxsize=64)
def _compiled_init(treedef, leaves: tuple, flat_shardings):
    """One jitted initializer per (spec tree, shardings), so equal trees compile once."""
    specs = jax.tree.unflatten(treedef, leaves)
    shardings = None if flat_shardings is None else jax.tree.unflatten(*flat_shardings)
    meshes = [x.mesh for x in flat_shardings[1] if hasattr(x, "mesh")] if flat_shardings else []
    draws = _Draws(leaves, meshes[0] if meshes else None)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0]]

    def build(k):
        out = draws(k, [_path_salt(p) for p in paths])
        for i, (p, s) in enumerate(zip(paths, leaves, strict=True)):
            if out[i] is None:
                out[i] = s.init(_path_key(k, p), s.shape, s.dtype)
        return jax.tree.unflatten(treedef, out)

    return jax.jit(build, out_shardings=shardings)


TOGETHER_MAX_SIZE = 1 << 16
"""Normal-initialised leaves of at most this many scalars are drawn together (see ``_Draws``).

On XLA:CPU each separately drawn leaf costs about 0.1 s of compile time (its own threefry
fusion), which dominated the first init of a small model (2 s for a 12-leaf Llama). The large
leaves of a real model are few, so they are drawn one by one, each directly in its sharding."""


def _normal_of(s: ParamSpec) -> _Normal | None:
    init = s.init.inner if isinstance(s.init, _Stacked) else s.init
    return init if isinstance(init, _Normal) else None


def _drawn_together(s: ParamSpec) -> bool:
    return _normal_of(s) is not None and math.prod(s.shape) <= TOGETHER_MAX_SIZE


def _path_salt(path) -> int:
    return zlib.crc32(jax.tree_util.keystr(path).encode()) & 0x7FFFFFFF


def _power_of_4_at_least(n: int) -> int:
    width = 1
    while width < n:
        width *= 4
    return width


def _normal_row(key: jax.Array, *, width: int) -> jax.Array:
    return jax.random.normal(key, (width,), jnp.float32)


class _Draws:
    """The small normal leaves of a spec list, drawn in a few vmapped random programs.

    Each leaf gets the values its own initializer would draw, bit for bit: a leaf (or each
    layer of a stacked leaf) is ``normal(key, [n])``, and with JAX's partitionable threefry
    (the default) the first ``n`` values of ``normal(key, [m])`` for ``m >= n`` are those of
    ``normal(key, [n])``. So draws are grouped by size rounded up to a power of 4 and each group
    is one vmapped ``jax.random.normal``: a handful of programs however many leaves there are.
    """

    def __init__(self, leaves, mesh):
        self.leaves, self.mesh = leaves, mesh
        self.small = [i for i, s in enumerate(leaves) if _drawn_together(s)]
        self.units = []  # (leaf, layer or None, size): one normal(key, [size]) each
        self.units_of = {}  # leaf -> the indices of its units, in layer order
        for i in self.small:
            s = leaves[i]
            first = len(self.units)
            if isinstance(s.init, _Stacked):
                n = math.prod(s.shape[1:])
                self.units += [(i, layer, n) for layer in range(s.shape[0])]
            else:
                self.units.append((i, None, math.prod(s.shape)))
            self.units_of[i] = range(first, len(self.units))

    def __call__(self, key, salts: list[int]) -> list:
        """``[leaf or None]``: the drawn leaves of ``fold_in(key, salts[i])``, None for others."""
        out: list = [None] * len(self.leaves)
        if not self.small:
            return out
        picked = jnp.asarray([salts[i] for i in self.small], jnp.uint32)
        drawn = jax.vmap(jax.random.fold_in, (None, 0))(key, picked)
        keys = {i: drawn[j] for j, i in enumerate(self.small)}
        layer_keys = self._layer_keys(keys)
        groups: dict[int, list] = {}
        for u, unit in enumerate(self.units):
            groups.setdefault(_power_of_4_at_least(unit[2]), []).append(u)
        values = {}
        for width, members in groups.items():
            unit_keys = [keys[i] if layer is None else layer_keys[i][layer]
                         for i, layer, _ in (self.units[u] for u in members)]  # fmt: skip
            z = jax.vmap(functools.partial(_normal_row, width=width))(jnp.stack(unit_keys))
            if self.mesh is not None:  # sliced into each leaf's sharding from a full copy
                z = jax.lax.with_sharding_constraint(z, jax.NamedSharding(self.mesh, P()))
            values |= {u: z[j, : self.units[u][2]] for j, u in enumerate(members)}
        for i in self.small:
            s = self.leaves[i]
            flat = jnp.concatenate([values[u] for u in self.units_of[i]])
            out[i] = (_normal_of(s).std * flat.reshape(s.shape)).astype(s.dtype)
        return out

    def _layer_keys(self, keys: dict) -> dict:
        """``split(leaf key, layers)`` of each stacked leaf, one vmapped split per layer count."""
        stacked = [i for i in self.small if isinstance(self.leaves[i].init, _Stacked)]
        out = {}
        for count in sorted({self.leaves[i].shape[0] for i in stacked}):
            members = [i for i in stacked if self.leaves[i].shape[0] == count]
            split = jax.vmap(lambda k, c=count: jax.random.split(k, c))(
                jnp.stack([keys[i] for i in members])
            )
            out |= {i: split[j] for j, i in enumerate(members)}
        return out


FRESH_INIT_SALT = 0x7FFFFFFF
"""A run's fresh params are drawn from ``fold_in(key(seed), FRESH_INIT_SALT)``."""


def fresh_init_key(seed: int) -> jax.Array:
    """The key :func:`init_params` draws a run's fresh params with (training and loading agree)."""
    return jax.random.fold_in(jax.random.key(seed), FRESH_INIT_SALT)


def fit_params(specs, source, key: jax.Array, shardings=None) -> tuple[dict, list, list]:
    """``source`` params fitted to ``specs``: params of the same path, shape and dtype are kept,
    the others drawn fresh by :func:`init_params` with ``key`` (the same per-path keys as a
    whole init), and params ``specs`` lacks dropped; placed by ``shardings`` if given.

    Returns:
        ``(params, new paths, dropped paths)``.
    """
    want, got = flatten(specs), flatten(source)
    same = lambda k: (
        (got[k].shape, jnp.dtype(got[k].dtype))
        == (  # noqa: E731
            tuple(want[k].shape),
            jnp.dtype(want[k].dtype),
        )
    )
    reuse = {k for k in want if k in got and same(k)}
    new, dropped = sorted(set(want) - reuse), sorted(set(got) - set(want))
    places = flatten(shardings) if shardings is not None else {}
    pick = lambda tree: unflatten({k: tree[k] for k in new})  # noqa: E731
    fresh = flatten(init_params(key, pick(want), pick(places) if places else None)) if new else {}
    put = lambda k, x: jax.device_put(x, places[k]) if places else x  # noqa: E731
    return unflatten({k: put(k, got[k]) if k in reuse else fresh[k] for k in want}), new, dropped


def param_count(tree: Any) -> int:
    """Number of scalars in a tree of arrays, ShapeDtypeStructs or ParamSpecs."""
    leaves = jax.tree.leaves(tree, is_leaf=is_spec)
    return int(sum(math.prod(x.shape) for x in leaves))


def flatten(tree: Any, sep: str = "/") -> dict[str, Any]:
    """Flattens a nested dict into ``{'layers/attn/wq': leaf}``."""
    out = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", tree)
    return out


def unflatten(flat: dict[str, Any], sep: str = "/") -> dict:
    """Inverse of :func:`flatten`."""
    out: dict = {}
    for name, leaf in flat.items():
        node = out
        *parents, last = name.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


def to_numpy(tree: Any) -> Any:
    """Copies a pytree of arrays to host numpy arrays."""
    return jax.tree.map(np.asarray, tree)
