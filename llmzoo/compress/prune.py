"""Magnitude pruning of a model's weight matrices: unstructured (global or per layer) and N:M.

The pruned matrices are those of :class:`~llmzoo.config.PruneConfig` ``targets`` among the
matrices the layers multiply through :func:`llmzoo.layers.linear.einsum`
(:func:`llmzoo.layers.lora.adaptable`); each is ``w [*S, I..., O...]`` (S the stacked ``layers``
dims, I its input dims, O its output dims; :func:`llmzoo.layers.lora.matrix_layout`).

- ``scope=global``: exactly ``round(sparsity * total)`` of all the target weights, the smallest
  by ``|w|``, are set to zero (one threshold for every matrix, as in Han et al. 2015, "Learning
  both Weights and Connections").
- ``scope=layer``: each matrix of each layer (each slice of a stacked ``[L, ...]`` weight) loses
  ``round(sparsity * size)`` of its own smallest weights.
- ``nm="N:M"``: in every group of M consecutive weights along the flattened input dims of each
  output (the reduction axis, as NVIDIA's 2:4 sparse tensor cores; Mishra et al. 2021,
  "Accelerating Sparse Deep Neural Networks"), the N largest by ``|w|`` are kept.

Ties are broken by position (of equal magnitudes, the earlier weight is pruned first), so a mask
is a function of the weights alone, and pruning a pruned tree again with the same config gives
the same mask: its zeros are the smallest weights.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo.config import PruneConfig
from llmzoo.errors import ConfigError
from llmzoo.layers.lora import adaptable, matches, matrix_layout
from llmzoo.params import ParamSpec, flatten, unflatten


def target_paths(specs, pcfg: PruneConfig) -> dict[str, ParamSpec]:
    """The matrices ``pcfg.targets`` selects: ``{path: spec}``.

    Raises:
        ConfigError: the patterns select no weight matrix (naming some that exist).
    """
    candidates = adaptable(specs)
    out = {p: s for p, s in candidates.items() if matches(pcfg.targets, p)}
    if not out:
        some = ", ".join(list(candidates)[:8]) or "none"
        raise ConfigError(
            f"prune.targets {list(pcfg.targets)} match no weight matrix; the matrices are {some}"
        )
    return out


def _fan(spec: ParamSpec) -> tuple[int, int, int]:
    """``(stacked size, fan_in, fan_out)`` of a weight matrix."""
    stack, n_in = matrix_layout(spec)
    cut = stack + n_in
    shape = spec.shape
    return math.prod(shape[:stack]), math.prod(shape[stack:cut]), math.prod(shape[cut:])


def check_nm(specs, pcfg: PruneConfig) -> None:
    """Raises a one-line ConfigError when N:M groups do not tile a target's input dims."""
    if pcfg.nm is None:
        return
    _, m = pcfg.n_m
    for path, spec in target_paths(specs, pcfg).items():
        _, fan_in, _ = _fan(spec)
        if fan_in % m:
            raise ConfigError(
                f"prune.nm={pcfg.nm!r}: {path} has {fan_in} inputs per output, not a multiple of "
                f"M={m}; choose an M that divides it or leave {path} out of prune.targets"
            )


def _ranks(a: jax.Array, axis: int) -> jax.Array:
    """The rank of each element of ``a`` along ``axis`` (0: smallest; ties by position)."""
    order = jnp.argsort(a, axis=axis, stable=True)
    return jnp.argsort(order, axis=axis)


@functools.partial(jax.jit, static_argnames=("k",))
def _keep_rows(a: jax.Array, k: int) -> jax.Array:
    """``a [R, n]`` (magnitudes): False for the ``k`` smallest of each row."""
    return _ranks(a, axis=-1) >= k


@functools.partial(jax.jit, static_argnames=("n", "m", "fan"))
def _keep_nm(w: jax.Array, n: int, m: int, fan: tuple[int, int, int]) -> jax.Array:
    """``w [*S, I..., O...]``: True for the ``n`` largest of every ``m`` consecutive inputs."""
    stacked, fan_in, fan_out = fan
    a = jnp.abs(w.astype(jnp.float32)).reshape(stacked, fan_in // m, m, fan_out)
    return (_ranks(a, axis=2) >= m - n).reshape(w.shape)


def _magnitudes(w) -> jax.Array:
    return jnp.abs(jnp.asarray(w).astype(jnp.float32))


def _check_plain(flat: dict, targets: dict) -> None:
    for path in targets:
        if not isinstance(flat[path], jax.Array | np.ndarray):
            raise ConfigError(
                f"cannot prune {path}, a {type(flat[path]).__name__}; prune the float run, then "
                "quantize it"
            )


def _unstructured(flat: dict, targets: dict, pcfg: PruneConfig) -> dict:
    """``{path: keep}`` for ``scope`` global or layer."""
    if pcfg.scope == "layer":
        out = {}
        for path, spec in targets.items():
            stacked, fan_in, fan_out = _fan(spec)
            size = fan_in * fan_out
            a = _magnitudes(flat[path]).reshape(stacked, size)
            out[path] = _keep_rows(a, round(pcfg.sparsity * size)).reshape(spec.shape)
        return out
    parts = [_magnitudes(flat[p]).reshape(-1) for p in targets]
    total = sum(x.size for x in parts)
    keep = _keep_rows(jnp.concatenate(parts)[None], round(pcfg.sparsity * total))[0]
    out, start = {}, 0
    for path, spec in targets.items():
        size = math.prod(spec.shape)
        out[path] = keep[start : start + size].reshape(spec.shape)
        start += size
    return out


def _placed(mask: jax.Array, w) -> jax.Array:
    """``mask`` laid out like ``w`` (its sharding), when ``w`` is a concrete jax array."""
    sharding = getattr(w, "sharding", None)
    return mask if sharding is None else jax.device_put(mask, sharding)


def masks(params, specs, pcfg: PruneConfig) -> dict:
    """The keep masks of ``pcfg`` over ``params`` (a model's params, declared by ``specs``).

    Returns:
        A tree like ``params``: a bool array (True: kept) for each target matrix, laid out like
        it, and None for every other leaf.

    Raises:
        ConfigError: no target matrix, an N:M that does not tile a target's input dims, or a
            target that is not a plain array (a quantized weight).
    """
    targets = target_paths(specs, pcfg)
    flat = flatten(params)
    _check_plain(flat, targets)
    if pcfg.nm is not None:
        check_nm(specs, pcfg)
        n, m = pcfg.n_m
        keep = {p: _keep_nm(jnp.asarray(flat[p]), n, m, _fan(s)) for p, s in targets.items()}
    else:
        keep = _unstructured(flat, targets, pcfg)
    return unflatten({p: _placed(keep[p], w) if p in keep else None for p, w in flat.items()})


def prune_params(params, specs, pcfg: PruneConfig) -> dict:
    """``params`` with the weights that :func:`masks` drops set to zero (other leaves as they
    are; each pruned matrix keeps its dtype and layout). Idempotent."""
    flat, keep = flatten(params), flatten(masks(params, specs, pcfg))
    out = {}
    for path, w in flat.items():
        k = keep.get(path)
        out[path] = w if k is None else _placed(jnp.where(k, w, jnp.zeros((), w.dtype)), w)
    return unflatten(out)


def sparsity(params, specs, pcfg: PruneConfig) -> float:
    """The fraction of the target matrices' weights (of ``pcfg.targets``) that are zero."""
    flat = flatten(params)
    zeros, total = 0, 0
    for path in target_paths(specs, pcfg):
        w = flat[path]
        zeros += int(jnp.sum(jnp.asarray(w) == 0))
        total += w.size
    return zeros / max(total, 1)


def describe(pcfg: PruneConfig) -> str:
    """A short description of ``pcfg`` for logs: ``"2:4"`` or ``"50% global"``."""
    return f"{pcfg.nm} structured" if pcfg.nm is not None else f"{pcfg.sparsity:.0%} {pcfg.scope}"
