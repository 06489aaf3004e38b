"""The decoder's KV cache: its layout, allocation, row selection and per-layer views.

The cache keeps one ``[B, K, S, H]`` key and value array per layer (a tuple, not one stacked
``[L, ...]`` array) and the decoder's cached pass loops over layers in Python, so each layer's
cache is its own buffer, written in place where the caller donates it or carries it through a
``lax.while_loop``; carrying a stacked cache through ``lax.scan`` as xs/ys instead copies all of
it on every decoded token. Heads lead the slots so that a block of keys feeds the attention
products without a transposed copy. Attention reads only the filled slots
(:func:`llmzoo.layers.kv_cache.prefix_attention`), so a step costs the current length.

With ``kv_cache_dtype="int8"`` each layer's keys and values are
:class:`llmzoo.layers.kv_cache.Int8Slots` (int8 ``[B, K, S, H]`` plus float32 scales
``[B, K, S]``): ``H + 4`` bytes per token and KV head where float32 takes ``4 H`` and bfloat16
``2 H``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llmzoo.layers import kv_cache, positional
from llmzoo.layers.attention import MaskRule
from llmzoo.layers.kv_cache import CachePlan


def empty_cache(cfg, batch_size: int, max_len: int, dtype) -> dict:
    """``{'k', 'v': L-tuples of [B, K, S, H], 'pos': [B, S] int32 (-1 = empty), 'index': 0}``;
    ``dtype`` int8 makes each layer's keys and values :class:`~llmzoo.layers.kv_cache.Int8Slots`."""
    shape = (batch_size, cfg.kv_heads, max_len, cfg.dim_per_head)
    if jnp.dtype(dtype) == jnp.int8:
        empty = functools.partial(kv_cache.empty_int8, shape)
    else:
        empty = functools.partial(jnp.zeros, shape, dtype)
    return {
        "k": tuple(empty() for _ in range(cfg.n_layers)),
        "v": tuple(empty() for _ in range(cfg.n_layers)),
        "pos": jnp.full((batch_size, max_len), -1, jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }


def select_rows(cache: dict, index: jax.Array) -> dict:
    """The cache's rows ``index [B']`` (every array but the shared write index; int8 slots'
    values and scales alike)."""
    rows = jax.tree.map(lambda x: x[index], {k: cache[k] for k in ("k", "v", "pos")})
    return rows | {"index": cache["index"]}


def layer_params(layers, n_layers: int) -> list:
    """Per-layer param trees from the stacked ``layers`` tree (leaves ``[L, ...]``), or from a
    sequence of per-layer trees (see :func:`unstack_layers`), which is returned as it is."""
    if isinstance(layers, (list, tuple)):
        return list(layers)
    return [jax.tree.map(lambda x, i=i: x[i], layers) for i in range(n_layers)]


def unstack_layers(params: dict, n_layers: int) -> dict:
    """``params`` with ``layers`` split into a tuple of per-layer trees.

    Decoding reads every weight once per token; per-layer weights are separate buffers that
    matrix products read in place, where slices of stacked weights are copied first on XLA CPU.
    """
    return params | {"layers": tuple(layer_params(params["layers"], n_layers))}


def cache_plan(cfg, positions: jax.Array, k_pos: jax.Array, length: jax.Array) -> CachePlan:
    """The attention plan of one cached pass: ``positions [B, T]`` against ``k_pos [B, S]``,
    ``length`` filled slots, blocks of :data:`llmzoo.layers.kv_cache.DECODE_BLOCK` (read now)."""
    slopes = positional.alibi_slopes(cfg.n_heads) if cfg.position == "alibi" else None
    slopes = None if slopes is None else jnp.asarray(slopes, jnp.float32)
    rule = MaskRule(positions, k_pos, window=cfg.sliding_window)
    return CachePlan(rule, length, slopes, block=kv_cache.DECODE_BLOCK)


__all__ = ["empty_cache", "select_rows", "layer_params", "unstack_layers", "cache_plan"]
