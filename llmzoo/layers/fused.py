"""The backends' fused attention kernels: cuDNN on GPU and Pallas splash attention on TPU.

Both are reached through ``model.attention_impl`` (the switch is in
:mod:`llmzoo.layers.attention_impl`). Each has a ``*_problem`` function that names why it cannot
serve given inputs (None if it can), so the switch falls back to blockwise attention with a
one-time warning instead of failing.

**Splash attention** is the kernel of ``jax.experimental.pallas.ops.tpu.splash_attention``, as
MaxText uses it: flash attention whose static mask (causal, a local window, or full) is known
block by block, so masked blocks are skipped in the forward and backward passes. It reads that
mask over token *indices*, plus segment ids, where llmzoo's rule
(:func:`~llmzoo.layers.attention.attention_mask`) reads positions. The two agree when positions
count up by one within each segment, as they do in every batch llmzoo builds (packed rows start
again at 0 in each segment; padding is a segment of its own, or a key at position -1). Keys at a
negative position get a segment no query has; a query that sees no key gets 0, as elsewhere.
Under a mesh the kernel runs inside ``jax.shard_map`` over the batch and the heads, since XLA
cannot partition a Mosaic kernel by itself. Off TPU, :data:`INTERPRET` runs the same kernel in the
Pallas interpreter (slow; for tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from llmzoo.layers.attention import MaskRule
from llmzoo.sharding import activation_spec

SPLASH_BLOCKS = (512, 256, 128)  # the largest of these that divides a length is its block size
INTERPRET = False  # run splash attention in the Pallas interpreter off TPU (tests only)
_NO_KEY, _NO_QUERY = -1, -2  # segment ids of padding keys and of queries that see nothing


def cudnn_problem(dtype, head_dim: int, t: int, s: int) -> str | None:
    """Why cuDNN flash attention cannot serve these inputs, or None if it can."""
    if jax.default_backend() not in ("gpu", "cuda"):
        return f"the {jax.default_backend()} backend has no cuDNN"
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"cuDNN attention needs bfloat16 or float16, not {jnp.dtype(dtype).name}"
    if head_dim % 8 or head_dim > 128:
        return f"cuDNN attention needs a head width H <= 128 and a multiple of 8, not {head_dim}"
    if t % 2 or s % 2:
        return f"cuDNN attention with a mask needs even lengths, not T={t}, S={s}"
    return None


def cudnn_attention(q, k, v, mask, bias, scale):
    """``jax.nn.dot_product_attention`` on cuDNN; rows that see no key give 0, as elsewhere."""
    bias = None if bias is None else bias.astype(q.dtype)
    out = jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=scale, implementation="cudnn"
    )
    seen = jnp.any(mask, axis=-1)  # [B, 1, T]
    return jnp.where(jnp.moveaxis(seen, 1, 2)[..., None], out, 0).astype(q.dtype)


def splash_problem(rule: MaskRule, *, alibi: bool = False) -> str | None:
    """Why splash attention cannot serve this rule, or None if it can (see the module doc)."""
    t, s = rule.q_pos.shape[1], rule.k_pos.shape[1]
    if jax.default_backend() != "tpu" and not INTERPRET:
        return f"the {jax.default_backend()} backend is not a TPU"
    if alibi:
        return "splash attention takes no ALiBi bias"
    if t % SPLASH_BLOCKS[-1] or s % SPLASH_BLOCKS[-1]:
        return f"splash attention needs lengths divisible by {SPLASH_BLOCKS[-1]}, not T={t}, S={s}"
    if rule.causal and t != s:
        return f"a causal splash mask needs self-attention (T = S), not T={t}, S={s}"
    if rule.window is not None and not rule.causal:
        return "splash attention takes a sliding window only with a causal mask"
    return None


def _block(length: int) -> int:
    return next(b for b in SPLASH_BLOCKS if length % b == 0)


@functools.lru_cache(maxsize=64)
def _kernel(n: int, t: int, s: int, causal: bool, window: int | None):
    """The splash kernel for N heads over a ``[T, S]`` mask (built once per shape)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    if window is not None:
        mask = sa.LocalMask((t, s), window_size=(window - 1, 0), offset=0)
    else:
        mask = sa.CausalMask((t, s)) if causal else sa.FullMask((t, s))
    bq, bk = _block(t), _block(s)
    sizes = sa.BlockSizes(
        block_q=bq,
        block_kv=bk,
        block_kv_compute=bk,
        block_q_dkv=bq,
        block_kv_dkv=bk,
        block_kv_dkv_compute=bk,
        block_q_dq=bq,
        block_kv_dq=bk,
    )
    with jax.ensure_compile_time_eval():  # the mask tables are constants, never tracers
        kernel = sa.make_splash_mha(
            sa.MultiHeadMask([mask] * n),
            block_sizes=sizes,
            head_shards=1,
            q_seq_shards=1,
            interpret=jax.default_backend() != "tpu",
        )
    return kernel, sa.SegmentIds


def _segments(rule: MaskRule) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Splash's query and key segment ids ``[B, T]``, ``[B, S]`` int32, and which queries see
    at least one key, ``seen [B, T]`` bool, under ``rule``."""
    zeros = lambda pos: jnp.zeros(pos.shape, jnp.int32)  # noqa: E731
    q_seg = zeros(rule.q_pos) if rule.q_segment is None else rule.q_segment.astype(jnp.int32)
    k_seg = zeros(rule.k_pos) if rule.k_segment is None else rule.k_segment.astype(jnp.int32)
    k_seg = jnp.where(rule.k_pos >= 0, k_seg, _NO_KEY)
    if rule.causal:  # self-attention (T = S): a query at position >= 0 sees at least itself
        seen = rule.q_pos >= 0
        return jnp.where(seen, q_seg, _NO_QUERY), k_seg, seen
    ordered = jnp.sort(k_seg, axis=-1)
    at = jax.vmap(jnp.searchsorted)(ordered, q_seg).clip(max=ordered.shape[1] - 1)
    return q_seg, k_seg, jnp.take_along_axis(ordered, at, axis=-1) == q_seg


def _head_axis(n: int, kh: int):
    """The mesh axis of both head dims, or None: query and KV heads are split together or not at
    all, so that each shard keeps whole GQA groups."""
    q_axis = activation_spec((n,), ("heads",))[0]
    return q_axis if q_axis == activation_spec((kh,), ("kv_heads",))[0] else None


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rule: MaskRule,
    *,
    scale: float | None = None,
) -> jax.Array:
    """Splash attention (see the module doc; check :func:`splash_problem` first).

    Args:
        q: ``[B, T, N, H]``.
        k, v: ``[B, S, K, H]`` with N a multiple of K.
        rule: the mask rule.
        scale: logit scale, default ``H ** -0.5``.

    Returns:
        ``[B, T, N, H]`` in the dtype of ``q``; 0 for a query that sees no key.
    """
    t, s, h = q.shape[1], k.shape[1], q.shape[-1]
    scale = h**-0.5 if scale is None else scale
    q_seg, k_seg, seen = _segments(rule)

    def run(q, k, v, q_seg, k_seg):  # [B, N, T, H], [B, K, S, H], [B, T], [B, S] (per shard)
        kernel, segment_ids = _kernel(q.shape[1], t, s, rule.causal, rule.window)
        return jax.vmap(lambda *a: kernel(*a[:3], segment_ids=segment_ids(*a[3:])))(
            q, k, v, q_seg, k_seg
        )

    batch = activation_spec((q.shape[0],), ("batch",))
    if batch is not None:  # under a mesh: one kernel per shard of the batch and the heads
        b_axis, h_axis = batch[0], _head_axis(q.shape[2], k.shape[2])
        heads, rows = PartitionSpec(b_axis, h_axis), PartitionSpec(b_axis)
        run = jax.shard_map(
            run, in_specs=(heads, heads, heads, rows, rows), out_specs=heads, check_vma=False
        )
    q = (q * jnp.asarray(scale, q.dtype)).swapaxes(1, 2)
    out = run(q, k.swapaxes(1, 2), v.swapaxes(1, 2), q_seg, k_seg).swapaxes(1, 2)
    return jnp.where(seen[:, :, None, None], out, 0).astype(q.dtype)


__all__ = [
    "INTERPRET",
    "SPLASH_BLOCKS",
    "cudnn_attention",
    "cudnn_problem",
    "splash_attention",
    "splash_problem",
]
