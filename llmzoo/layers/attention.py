"""Multi-head attention (MHA, MQA, GQA) as pure functions, with masks and a KV cache.

Masks are built from *positions*, not array indices: key ``s`` is visible to query ``t`` when
``k_pos >= 0`` (empty or padding slots carry -1), ``k_pos <= q_pos`` (causal), ``q_pos - k_pos <
window`` (sliding window) and both tokens share a segment id (packed documents). The same rule then
serves training on packed rows, right- or left-padded batches, and decoding against a KV cache.
:class:`MaskRule` holds the rule's inputs; :func:`attention_mask` materialises it as [B, 1, T, S],
and :mod:`llmzoo.layers.blockwise` evaluates it one block at a time. A query that sees no key (a
padding row) gets output 0 on every path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from llmzoo.layers import linear
from llmzoo.params import ParamSpec, normal, zeros


def attention_specs(
    d: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    *,
    qkv_bias: bool = False,
    out_bias: bool = False,
    std: float = 0.02,
    out_std: float | None = None,
) -> dict:
    """Declares attention params: ``wq [D, N, H]``, ``wk, wv [D, K, H]``, ``wo [N, H, D]``.

    Optional biases ``bq [N, H]``, ``bk, bv [K, H]`` (``qkv_bias``) and ``bo [D]`` (``out_bias``).
    """
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
    specs = {
        "wq": ParamSpec(
            (d, n_heads, head_dim),
            logical_axes=("embed", "heads", "head_dim"),
            init=normal(std),
        ),
        "wk": ParamSpec(
            (d, n_kv_heads, head_dim),
            logical_axes=("embed", "kv_heads", "head_dim"),
            init=normal(std),
        ),
        "wv": ParamSpec(
            (d, n_kv_heads, head_dim),
            logical_axes=("embed", "kv_heads", "head_dim"),
            init=normal(std),
        ),
        "wo": ParamSpec(
            (n_heads, head_dim, d),
            logical_axes=("heads", "head_dim", "embed"),
            init=normal(out_std or std),
        ),
    }
    if qkv_bias:
        specs["bq"] = ParamSpec((n_heads, head_dim), logical_axes=("heads", "head_dim"), init=zeros)
        for name in ("bk", "bv"):
            specs[name] = ParamSpec(
                (n_kv_heads, head_dim),
                logical_axes=("kv_heads", "head_dim"),
                init=zeros,
            )
    if out_bias:
        specs["bo"] = ParamSpec((d,), logical_axes=("embed",), init=zeros)
    return specs


def attention_mask(
    q_pos: jax.Array,
    k_pos: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    q_segment: jax.Array | None = None,
    k_segment: jax.Array | None = None,
) -> jax.Array:
    """Boolean attention mask from positions (and optional segment ids).

    Args:
        q_pos: ``[B, T]`` query positions.
        k_pos: ``[B, S]`` key positions; negative marks an empty or padding slot.
        causal: hide keys whose position is after the query's.
        window: sliding window W: hide keys with ``q_pos - k_pos >= W``.
        q_segment, k_segment: ``[B, T]``, ``[B, S]`` segment ids; attend only within a segment.

    Returns:
        ``[B, 1, T, S]`` bool, True where attention is allowed.
    """
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]
    mask = kp >= 0
    if causal:
        mask = mask & (kp <= qp)
    if window is not None:
        mask = mask & (qp - kp < window)
    if q_segment is not None:
        mask = mask & (q_segment[:, :, None] == k_segment[:, None, :])
    return mask[:, None]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MaskRule:
    """Which keys each query sees, as positions and segment ids (the rule of ``attention_mask``).

    Attributes:
        q_pos: ``[B, T]`` query positions.
        k_pos: ``[B, S]`` key positions; negative marks an empty or padding slot.
        q_segment, k_segment: ``[B, T]``, ``[B, S]`` segment ids, or None.
        causal: hide keys after the query (static).
        window: sliding window W: hide keys with ``q_pos - k_pos >= W`` (static).
    """

    q_pos: jax.Array
    k_pos: jax.Array
    q_segment: jax.Array | None = None
    k_segment: jax.Array | None = None
    causal: bool = dataclasses.field(default=True, metadata=dict(static=True))
    window: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    def dense_mask(self) -> jax.Array:
        """The materialised ``[B, 1, T, S]`` bool mask."""
        return attention_mask(
            self.q_pos,
            self.k_pos,
            causal=self.causal,
            window=self.window,
            q_segment=self.q_segment,
            k_segment=self.k_segment,
        )


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Softmax attention with grouped KV heads; logits and softmax in float32.

    Args:
        q: ``[B, T, N, H]``.
        k, v: ``[B, S, K, H]`` with N a multiple of K (K = N: MHA, K = 1: MQA, else GQA).
        mask: ``[B, 1 or N, T, S]`` bool, True = attend. A query that sees no key gets output
            0 (and zero gradients), as in :func:`llmzoo.layers.blockwise.blockwise_attention`.
        bias: ``[B, N, T, S]`` added to the logits (ALiBi, T5).
        scale: logit scale, default ``H ** -0.5``.

    Returns:
        ``[B, T, N, H]`` in the dtype of ``q``.
    """
    probs = attention_weights(q, k, mask=mask, bias=bias, scale=scale)
    return _weighted_values(probs.astype(v.dtype), v)


def attention_weights(
    q: jax.Array,
    k: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """The softmax probabilities of :func:`dot_product_attention`, float32 ``[B, N, T, S]``.

    Args and conventions as :func:`dot_product_attention`; each row sums to 1 over its allowed
    keys, and a row that sees no key is all 0.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = _scores(q, k) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    return _softmax(logits, mask)


@jax.custom_vjp
def _softmax(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax over the last axis, over the keys ``mask`` allows (None: every key); a row that
    allows none is all 0 (rather than the average of every value)."""
    if mask is None:
        return jax.nn.softmax(logits, axis=-1)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.where(jnp.any(mask, axis=-1, keepdims=True), probs, 0.0)


def _softmax_fwd(logits, mask):
    probs = _softmax(logits, mask)
    return probs, probs


def _softmax_bwd(probs: jax.Array, g: jax.Array) -> tuple[jax.Array, None]:
    """``d logits = p * (g - sum(g * p))``: the only residual is ``probs``, one ``[B, N, T, S]``
    array, where autodiff of the forward keeps the shifted logits and their exponentials too.
    Masked keys and empty rows have ``p = 0``, hence zero gradient, as in the forward."""
    return probs * (g - jnp.sum(g * probs, axis=-1, keepdims=True)), None


_softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _scores(q: jax.Array, k: jax.Array) -> jax.Array:
    """``q [B, T, N, H]`` . ``k [B, S, K, H]`` -> float32 ``[B, N, T, S]``, q heads grouped over K.

    Multi-head attention (K = N) skips the group axis: XLA's CPU dots run ~15% faster without it.
    """
    b, t, n, h = q.shape
    kh = k.shape[2]
    if kh == n:
        return jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
    qg = q.reshape(b, t, kh, n // kh, h)
    s = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32)
    return s.reshape(b, n, t, -1)


def _weighted_values(probs: jax.Array, v: jax.Array) -> jax.Array:
    """``probs [B, N, T, S]`` . ``v [B, S, K, H]`` -> ``[B, T, N, H]`` (the inverse grouping)."""
    b, n, t, s = probs.shape
    kh, h = v.shape[2:]
    if kh == n:
        return jnp.einsum("bnts,bsnh->btnh", probs, v)
    out = jnp.einsum("bkgts,bskh->btkgh", probs.reshape(b, kh, n // kh, t, s), v)
    return out.reshape(b, t, n, h)


def fuse_qkv(params: dict) -> dict:
    """One layer's attention params with ``wq``, ``wk``, ``wv`` as one ``wqkv [D, K, G + 2, H]``
    (G = N / K query heads per KV head, then that KV head's key and value), which
    :func:`qkv_projection` reads with one matmul instead of three. Decoding reads every weight
    once per token, and on CPU three small matrix-vector products cost more than one of their
    size. Quantized, LoRA or probe leaves are left as they are.
    """
    wq, wk, wv = (params[name] for name in ("wq", "wk", "wv"))
    if not all(isinstance(w, jax.Array) for w in (wq, wk, wv)):
        return params
    d, n, h = wq.shape
    kh = wk.shape[1]
    wqkv = jnp.concatenate([wq.reshape(d, kh, n // kh, h), wk[:, :, None], wv[:, :, None]], axis=2)
    return {k: v for k, v in params.items() if k not in ("wq", "wk", "wv")} | {"wqkv": wqkv}


def _fused_qkv(wqkv: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    b, t = x.shape[:2]
    kh, groups, h = wqkv.shape[1], wqkv.shape[2] - 2, wqkv.shape[3]
    y = linear.einsum("btd,dkeh->btkeh", x, wqkv)
    q = y[:, :, :, :groups].reshape(b, t, kh * groups, h)
    return q, y[:, :, :, groups], y[:, :, :, groups + 1]


def qkv_projection(params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Projects ``x [B, T, D]`` to ``q [B, T, N, H]``, ``k, v [B, T, K, H]`` (with biases),
    from ``wq``, ``wk``, ``wv`` or from their :func:`fuse_qkv`."""
    dt = x.dtype
    if "wqkv" in params:
        q, k, v = _fused_qkv(params["wqkv"], x)
    else:
        q = linear.einsum("btd,dnh->btnh", x, params["wq"])
        k = linear.einsum("btd,dkh->btkh", x, params["wk"])
        v = linear.einsum("btd,dkh->btkh", x, params["wv"])
    if "bq" in params:
        q, k, v = (
            q + params["bq"].astype(dt),
            k + params["bk"].astype(dt),
            v + params["bv"].astype(dt),
        )
    return q, k, v


def out_projection(params: dict, o: jax.Array) -> jax.Array:
    """Projects ``o [B, T, N, H]`` back to ``[B, T, D]`` (with bias).

    As one ``[B * T, N * H] @ [N * H, D]`` matmul rather than an einsum contracting two dims:
    batch-1 greedy decoding ran 1.80-2.12x Hugging Face's speed this way against 1.65-1.72x
    (``benchmarks/decode.py``, same runs, CPU).
    """
    b, t, n, h = o.shape
    wo = linear.merge_inputs(params["wo"], 2)
    out = linear.einsum("mi,id->md", o.reshape(b * t, n * h), wo).reshape(b, t, -1)
    if "bo" in params:
        out = out + params["bo"].astype(o.dtype)
    return out


def update_kv_cache(
    cache_k: jax.Array, cache_v: jax.Array, k: jax.Array, v: jax.Array, index: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Writes new keys/values into a preallocated cache at slot ``index``.

    Args:
        cache_k, cache_v: ``[B, S, K, H]``.
        k, v: ``[B, T, K, H]`` for the T new tokens.
        index: scalar int, the first slot to write.

    Returns:
        The updated ``(cache_k, cache_v)``.
    """
    start = (0, index, 0, 0)
    return (
        jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start),
        jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start),
    )
