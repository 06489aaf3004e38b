"""Longformer attention (Beltagy et al., 2020): a sliding window plus a few global tokens.

A *local* query sees the keys within ``W = window / 2`` positions on either side that are neither
padding nor global, plus every global key, all with the layer's usual q/k/v projections, under one
softmax. A *global* query sees every key through separate projections (``query_global``,
``key_global``, ``value_global``), and its output replaces the local one. Keys of another segment
are never seen (segment 0 marks padding), so packed rows work as in :mod:`.attention`.

Memory grows linearly with length: the window is evaluated in chunks of C = max W queries, each
against its own and its two neighbouring chunks (logits ``[B, T/C, N, C, 3C]``), and the global
part uses G static slots per row (``[B, T, N, G]`` and ``[B, N, G, T]``), never a ``[T, T]``
mask. :func:`dense_reference` is the same rule materialised densely, for tests and benchmarks.

Dimensions: B batch, T tokens, N heads, H head width, D model width, W one-sided window, C chunk
length, K = ceil(T / C) chunks, G global slots (``max_global_tokens``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmzoo.layers import attention as attn_lib
from llmzoo.layers import linear

_NEG = float(jnp.finfo(jnp.float32).min)
_F32 = jnp.float32


def global_specs(d: int, n_heads: int, head_dim: int, std: float = 0.02) -> dict:
    """The global projections ``wq, wk, wv [D, N, H]`` and ``bq, bk, bv [N, H]`` (no output)."""
    specs = attn_lib.attention_specs(d, n_heads, n_heads, head_dim, qkv_bias=True, std=std)
    del specs["wo"]
    return specs


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LongformerPlan:
    """Who attends to whom, built once per batch by :func:`plan`.

    Attributes:
        segment: ``[B, T]`` segment ids; 0 marks padding (never attended).
        slots: ``[B, G]`` positions of the global tokens, left-aligned; empty slots hold T.
        valid: ``[B, G]`` bool, which slots hold a global token.
        windows: ``[L]`` one-sided window W of each layer (int32).
        layer: the W of the current layer (a scalar) once :meth:`at_layer` picked it.
        chunk: C, the chunk length (static): the largest W.
        has_global: whether the batch carries global tokens at all (static).
    """

    segment: jax.Array
    slots: jax.Array
    valid: jax.Array
    windows: jax.Array
    layer: jax.Array | None = None
    chunk: int = dataclasses.field(default=1, metadata=dict(static=True))
    has_global: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def at_layer(self, i: jax.Array) -> LongformerPlan:
        """The plan of layer ``i`` (a traced index)."""
        return dataclasses.replace(self, layer=self.windows[i])


def plan(
    segment: jax.Array, global_mask: jax.Array | None, windows: tuple[int, ...], max_global: int
) -> LongformerPlan:
    """The plan of a batch (built once, outside the layer scan).

    Args:
        segment: ``[B, T]`` segment ids; 0 marks padding.
        global_mask: ``[B, T]``, nonzero marks a global token; None: no global tokens.
        windows: the full window of each layer (even).
        max_global: G; a row with more global tokens keeps its first G (``encoder.check_batch``
            refuses such batches up front).

    Returns:
        A :class:`LongformerPlan`; pick a layer with :meth:`LongformerPlan.at_layer`.
    """
    b, t = segment.shape
    half = tuple(w // 2 for w in windows)
    if global_mask is None:
        slots, valid = jnp.full((b, 1), t, jnp.int32), jnp.zeros((b, 1), bool)
    else:
        is_global = (global_mask != 0) & (segment != 0)
        nonzero = jax.vmap(lambda m: jnp.nonzero(m, size=max_global, fill_value=t)[0])
        slots = nonzero(is_global).astype(jnp.int32)
        valid = slots < t
    return LongformerPlan(
        segment,
        slots,
        valid,
        jnp.asarray(half, jnp.int32),
        None,
        max(half),
        global_mask is not None,
    )


def _pad_to(x: jax.Array, length: int, value=0) -> jax.Array:
    pad = [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, pad, constant_values=value)


def _windows(x: jax.Array, c: int, value=0) -> jax.Array:
    """``[B, K*C, ...]`` -> ``[B, K, 3C, ...]``: each chunk beside its two neighbours."""
    b, k = x.shape[0], x.shape[1] // c
    pad = [(0, 0), (c, c)] + [(0, 0)] * (x.ndim - 2)
    chunks = jnp.pad(x, pad, constant_values=value).reshape(b, k + 2, c, *x.shape[2:])
    return jnp.concatenate([chunks[:, :-2], chunks[:, 1:-1], chunks[:, 2:]], axis=2)


def _gather(x: jax.Array, slots: jax.Array) -> jax.Array:
    """Rows ``slots [B, G]`` of ``x [B, T, ...]`` (empty slots clip to the last row)."""
    index = slots.reshape(slots.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1, mode="clip")


def local_attention(q, k, v, lp: LongformerPlan) -> jax.Array:
    """The window plus the global keys under one softmax. ``q, k, v [B, T, N, H]`` -> same.

    Logits are ``[B, K, N, C, 3C]`` (window) and ``[B, K, N, C, G]`` (global keys): O(T (3C + G)).
    A query that sees no key (padding) gets output 0.
    """
    b, t, n, h = q.shape
    c = lp.chunk
    kc = -(-t // c)
    seg = _pad_to(lp.segment, kc * c)
    is_global = jnp.zeros((b, t + 1), bool).at[jnp.arange(b)[:, None], lp.slots].set(lp.valid)
    local_key = (seg != 0) & ~_pad_to(is_global[:, :t], kc * c)
    q_seg = seg.reshape(b, kc, c)
    qc = (_pad_to(q, kc * c) * h**-0.5).reshape(b, kc, c, n, h)
    kw, vw = (_windows(_pad_to(x, kc * c), c) for x in (k, v))  # [B, K, 3C, N, H]
    rows, cols = jnp.arange(c)[:, None], jnp.arange(3 * c)[None, :]
    band = jnp.abs(cols - c - rows) <= lp.layer  # [C, 3C]: key offset within W of the query
    same = q_seg[..., None] == _windows(seg, c, -1)[:, :, None, :]  # [B, K, C, 3C]
    mask = (band & same & _windows(local_key, c, False)[:, :, None, :])[:, :, None]
    s_loc = jnp.einsum("bkcnh,bksnh->bkncs", qc, kw, preferred_element_type=_F32)
    s_loc = jnp.where(mask, s_loc, _NEG)
    parts = [(s_loc, mask, vw, "bkncs,bksnh->bkcnh")]
    if lp.has_global:
        kg, vg = _gather(k, lp.slots), _gather(v, lp.slots)  # [B, G, N, H]
        g_seg = jnp.where(lp.valid, _gather(lp.segment, lp.slots), -1)
        g_mask = (q_seg[..., None] == g_seg[:, None, None, :])[:, :, None]  # [B, K, 1, C, G]
        s_glob = jnp.einsum("bkcnh,bgnh->bkncg", qc, kg, preferred_element_type=_F32)
        parts.append((jnp.where(g_mask, s_glob, _NEG), g_mask, vg, "bkncg,bgnh->bkcnh"))
    top = jnp.max(jnp.stack([jnp.max(s, axis=-1) for s, *_ in parts]), axis=0)[..., None]
    out, denom = 0.0, 0.0
    for s, m, val, spec in parts:
        p = jnp.where(m, jnp.exp(s - top), 0.0)
        denom = denom + jnp.sum(p, axis=-1)
        out = out + jnp.einsum(spec, p.astype(val.dtype), val, preferred_element_type=_F32)
    denom = jnp.moveaxis(denom, 2, 3)[..., None]  # [B, K, C, N, 1]
    out = jnp.where(denom > 0, out / jnp.where(denom > 0, denom, 1.0), 0.0)
    return out.reshape(b, kc * c, n, h)[:, :t].astype(q.dtype)


def global_attention(params: dict, x: jax.Array, lp: LongformerPlan) -> jax.Array:
    """Global queries against every key of their segment, with the global projections.

    ``x [B, T, D]`` -> ``[B, G, N, H]``; logits are ``[B, N, G, T]``.
    """
    dt, h = x.dtype, params["wq"].shape[-1]
    qg = linear.einsum("bgd,dnh->bgnh", _gather(x, lp.slots), params["wq"])
    kg = linear.einsum("btd,dnh->btnh", x, params["wk"]) + params["bk"].astype(dt)
    vg = linear.einsum("btd,dnh->btnh", x, params["wv"]) + params["bv"].astype(dt)
    qg = (qg + params["bq"].astype(dt)) * h**-0.5
    s = jnp.einsum("bgnh,btnh->bngt", qg, kg, preferred_element_type=_F32)
    g_seg = _gather(lp.segment, lp.slots)
    mask = (g_seg[:, :, None] == lp.segment[:, None, :]) & (lp.segment[:, None, :] != 0)
    s = jnp.where(mask[:, None], s, _NEG)
    p = jnp.where(mask[:, None], jax.nn.softmax(s, axis=-1), 0.0)
    return jnp.einsum("bngt,btnh->bgnh", p.astype(dt), vg, preferred_element_type=_F32).astype(dt)


def attend(params: dict, global_params: dict | None, x: jax.Array, lp: LongformerPlan):
    """Longformer self-attention of ``x [B, T, D]`` (before the output projection):
    ``[B, T, N, H]``. ``params`` holds the local ``wq, wk, wv`` (+ biases), ``global_params``
    those of :func:`global_specs` (used only when the batch has global tokens)."""
    q, k, v = attn_lib.qkv_projection(params, x)
    out = local_attention(q, k, v, lp)
    if lp.has_global:
        og = global_attention(global_params, x, lp)
        rows = jnp.arange(x.shape[0])[:, None]
        out = out.at[rows, lp.slots].set(og.astype(out.dtype), mode="drop")  # empty slots: T
    return out


def _dense_masks(x: jax.Array, lp: LongformerPlan):
    """``(is_global [B, T], same [B, T, T], local [B, T, T])``: the global tokens, the keys of a
    query's own (non-padding) segment, and those a local query sees."""
    b, t, _ = x.shape
    seg = lp.segment
    is_global = jnp.zeros((b, t + 1), bool).at[jnp.arange(b)[:, None], lp.slots].set(lp.valid)
    is_global = is_global[:, :t]
    pos = jnp.arange(t)
    near = jnp.abs(pos[:, None] - pos[None, :]) <= lp.layer
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    local = same & ((near[None] & ~is_global[:, None, :]) | is_global[:, None, :])
    return is_global, same, local


def attention_probs(
    params: dict, global_params: dict | None, x: jax.Array, lp: LongformerPlan
) -> jax.Array:
    """The probabilities :func:`attend` uses, scattered back to a dense float32 ``[B, N, T, T]``
    (O(T^2) memory: for inspection): a local query's row holds its window and the global keys,
    a global query's row (its own projections) every key of its segment; padding rows are 0."""
    q, k, _ = attn_lib.qkv_projection(params, x)
    is_global, same, local = _dense_masks(x, lp)
    probs = attn_lib.attention_weights(q, k, mask=local[:, None])
    if lp.has_global:
        qg, kg, _ = attn_lib.qkv_projection(global_params, x)
        pg = attn_lib.attention_weights(qg, kg, mask=same[:, None])
        probs = jnp.where(is_global[:, None, :, None], pg, probs)
    return probs


def dense_reference(params: dict, global_params: dict | None, x: jax.Array, lp: LongformerPlan):
    """:func:`attend` with ``[B, T, T]`` masks (O(T^2) memory): the reference it must equal."""
    q, k, v = attn_lib.qkv_projection(params, x)
    is_global, same, local = _dense_masks(x, lp)
    out = attn_lib.dot_product_attention(q, k, v, mask=local[:, None])
    if lp.has_global:
        qg, kg, vg = attn_lib.qkv_projection(global_params, x)
        og = attn_lib.dot_product_attention(qg, kg, vg, mask=same[:, None])
        out = jnp.where(is_global[:, :, None, None], og, out)
    return out
