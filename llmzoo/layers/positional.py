"""Positional encodings: sinusoidal, learned (a plain table), RoPE with scaling, ALiBi, T5 buckets.

RoPE follows Su et al. (2021) in the "rotate-half" layout used by GPT-NeoX, Llama and Hugging Face:
dimension ``i`` of the rotated slice pairs with ``i + R/2``. Frequency scaling variants:
``linear`` (position interpolation, Chen et al. 2023), ``ntk`` (NTK-aware base change), ``yarn``
(Peng et al. 2023) and ``llama3`` (Meta's band-wise smoothing).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo.config import RopeScaling


def sinusoidal(positions: jax.Array, d: int, *, max_timescale: float = 10000.0) -> jax.Array:
    """Sinusoidal position embeddings of Vaswani et al. (2017).

    ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/d))``.

    Args:
        positions: ``[...]`` integer positions.
        d: embedding width (even).

    Returns:
        ``[..., d]`` float32.
    """
    inv = 1.0 / (max_timescale ** (np.arange(0, d, 2, dtype=np.float32) / d))
    angles = positions[..., None].astype(jnp.float32) * inv
    out = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return out.reshape(*positions.shape, d)


def rope_inv_freq(
    rotary_dim: int, theta: float = 10000.0, scaling: RopeScaling | None = None
) -> tuple[np.ndarray, float]:
    """Inverse frequencies of RoPE for a rotary slice of width R, with optional scaling.

    Args:
        rotary_dim: R, the number of rotated dimensions per head (even).
        theta: the base.
        scaling: optional :class:`RopeScaling`.

    Returns:
        ``(inv_freq [R/2] float32, attention_factor)``; cos and sin are multiplied by the factor.
    """
    r = rotary_dim
    exponents = np.arange(0, r, 2, dtype=np.float32) / r
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq.astype(np.float32), 1.0
    s = scaling
    if s.kind == "linear":
        return (inv_freq / s.factor).astype(np.float32), 1.0
    if s.kind == "ntk":
        base = theta * s.factor ** (r / (r - 2))
        return (1.0 / (base**exponents)).astype(np.float32), 1.0
    if s.kind == "llama3":
        old = s.original_max_position_embeddings
        low_wavelen = old / s.low_freq_factor
        high_wavelen = old / s.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
        smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0

    # yarn
    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    factor = s.factor
    attn = s.attention_factor
    if attn is None:
        if s.mscale and s.mscale_all_dim:
            attn = mscale(factor, s.mscale) / mscale(factor, s.mscale_all_dim)
        else:
            attn = mscale(factor)

    def correction_dim(rot):
        orig = s.original_max_position_embeddings
        return (r * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, r - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(r // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    pos_freqs = theta**exponents
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv.astype(np.float32), float(attn)


def apply_rope(
    x: jax.Array,
    positions: jax.Array,
    inv_freq: jax.Array,
    *,
    attention_factor: float = 1.0,
) -> jax.Array:
    """Rotates the first R = 2 * len(inv_freq) dims of each head; the rest pass through.

    Args:
        x: ``[B, T, N, H]`` queries or keys.
        positions: ``[B, T]`` integer positions.
        inv_freq: ``[R/2]`` from :func:`rope_inv_freq`.
        attention_factor: multiplier on cos and sin (YaRN).

    Returns:
        ``[B, T, N, H]`` in the dtype of ``x``.
    """
    r = 2 * inv_freq.shape[0]
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, T, R/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, R]
    cos, sin = jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor
    xr, xp = x[..., :r].astype(jnp.float32), x[..., r:]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2 :]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = (xr * cos + rotated * sin).astype(x.dtype)
    return jnp.concatenate([out, xp], axis=-1) if xp.shape[-1] else out


def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi head slopes (Press et al., 2022).

    For a power of two N the slopes are the geometric sequence ``2^(-8i/N)``, i = 1..N. Otherwise
    the slopes of the closest lower power of two are followed by every other slope of the next
    power of two, as in the paper's reference code and transformers' BLOOM
    (``build_alibi_tensor``).

    Args:
        n_heads: N.

    Returns:
        ``[N]`` float32.
    """

    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return np.asarray(pow2(n_heads), np.float32)
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = pow2(2 * closest)[0::2][: n_heads - closest]
    return np.asarray(pow2(closest) + extra, np.float32)


def alibi_bias(slopes: jax.Array, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
    """ALiBi attention bias ``-slope * (q - k)`` for keys at or before the query.

    BLOOM adds ``slope * k`` instead: the two differ by ``-slope * q``, constant over the keys of
    a query, so their softmax is the same. Positions (not indices) make packed rows and left
    padding work.

    Args:
        slopes: ``[N]``.
        q_pos: ``[B, T]`` query positions.
        k_pos: ``[B, S]`` key positions.

    Returns:
        ``[B, N, T, S]`` float32 (future keys get a positive bias; mask them separately).
    """
    dist = (q_pos[:, :, None] - k_pos[:, None, :]).astype(jnp.float32)  # [B, T, S]
    return -jnp.asarray(slopes)[None, :, None, None] * dist[:, None]


def t5_relative_bucket(
    relative_position: jax.Array,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance=128,
) -> jax.Array:
    """T5's relative position buckets (Raffel et al., 2020, as in the Mesh TensorFlow code).

    Args:
        relative_position: ``[...]`` integer ``key_pos - query_pos``.
        bidirectional: encoder (True) or causal decoder (False).
        num_buckets: total buckets.
        max_distance: distances at or beyond this share the last bucket.

    Returns:
        ``[...]`` int32 bucket ids in ``[0, num_buckets)``.
    """
    rel = relative_position.astype(jnp.int32)
    buckets = jnp.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).astype(jnp.int32) * num_buckets
        rel = jnp.abs(rel)
    else:
        rel = -jnp.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    safe = jnp.maximum(rel, 1).astype(jnp.float32)
    large = max_exact + (
        jnp.log(safe / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, rel, large)


def t5_bias(
    table: jax.Array,
    q_pos: jax.Array,
    k_pos: jax.Array,
    *,
    bidirectional: bool,
    max_distance=128,
) -> jax.Array:
    """T5 relative attention bias.

    Args:
        table: ``[num_buckets, N]`` learned bias per bucket and head.
        q_pos: ``[B, T]``; k_pos: ``[B, S]``.

    Returns:
        ``[B, N, T, S]``.
    """
    rel = k_pos[:, None, :] - q_pos[:, :, None]
    buckets = t5_relative_bucket(
        rel,
        bidirectional=bidirectional,
        num_buckets=table.shape[0],
        max_distance=max_distance,
    )
    return jnp.transpose(table[buckets], (0, 3, 1, 2))
