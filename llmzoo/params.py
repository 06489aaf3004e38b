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

    Used to stack per-layer params for ``lax.scan``. The initializer is vmapped, so each layer is
    drawn independently.
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
    name = jax.tree_util.keystr(path)
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def init_params(key: jax.Array, specs: Any, shardings: Any = None) -> Any:
    """Materialises a spec tree into arrays under ``jax.jit``.

    Each leaf's key is ``fold_in(key, crc32(path))``, so adding a parameter does not change the
    initial values of the others.

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

    def build(k):
        return jax.tree_util.tree_map_with_path(
            lambda p, s: s.init(_path_key(k, p), s.shape, s.dtype), specs, is_leaf=is_spec
        )

    return jax.jit(build, out_shardings=shardings)


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
