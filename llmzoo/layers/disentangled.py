"""DeBERTa's disentangled attention (He et al., 2021, "DeBERTa: Decoding-enhanced BERT with
Disentangled Attention"; DeBERTa-v2/v3 log-bucketed relative positions).

Besides content-to-content logits ``q_i . k_j``, each head scores content-to-position
(``c2p``: ``q_i . Kr[idx(i, j)]``) and position-to-content (``p2c``: ``k_j . Qr[idx(i, j)]``),
where ``Kr``, ``Qr`` are the relative-position embeddings ``[2S, D]`` projected by the key and
query projections (``share_att_key``) or by their own projections, and ``idx(i, j) =
clip(bucket(pos_i - pos_j) + S, 0, 2S - 1)``. The sum is scaled by ``1 / sqrt(H * (1 + A))`` with A
the number of position terms, so it keeps the variance of plain attention.

Shapes: B batch, T queries, S keys (also the span of relative positions, named R here to avoid
the clash: the relative table has ``2R`` rows), N heads, H head width, D model width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from llmzoo.layers import linear
from llmzoo.params import ParamSpec, normal, zeros

POS_ATT_TYPES = ("c2p", "p2c")


def make_log_bucket_position(
    relative_pos: jax.Array, bucket_size: int, max_position: int
) -> jax.Array:
    """Log-bucketed relative positions of DeBERTa-v2 (He et al., 2021).

    Distances below ``bucket_size // 2`` keep their value; larger ones are mapped
    logarithmically, reaching ``bucket_size - 1`` at ``max_position - 1``. Computed in float32
    exactly as the reference implementation, so bucket boundaries agree.

    Args:
        relative_pos: ``[...]`` int relative positions ``q_pos - k_pos``.
        bucket_size: the number of buckets on each side.
        max_position: the largest distance the buckets are laid out for.

    Returns:
        ``[...]`` int32 bucketed positions, odd in ``relative_pos``.
    """
    rel = relative_pos.astype(jnp.int32)
    mid = bucket_size // 2
    sign = jnp.sign(rel)
    abs_pos = jnp.where((rel < mid) & (rel > -mid), mid - 1, jnp.abs(rel))
    log_base = jnp.log(jnp.float32((max_position - 1) / mid))
    log_pos = jnp.ceil(jnp.log(abs_pos.astype(jnp.float32) / mid) / log_base * (mid - 1)) + mid
    bucket = jnp.where(abs_pos <= mid, rel.astype(jnp.float32), log_pos * sign)
    return bucket.astype(jnp.int32)


def relative_index(
    q_pos: jax.Array, k_pos: jax.Array, *, span: int, bucket_size: int = 0, max_position: int = 0
) -> jax.Array:
    """Rows of the relative-position table each query-key pair reads.

    Args:
        q_pos: ``[B, T]`` query positions.
        k_pos: ``[B, S]`` key positions.
        span: R; the table has ``2R`` rows, row ``R + d`` holding distance ``d``.
        bucket_size: log buckets (DeBERTa-v2 ``position_buckets``); 0 uses raw distances.
        max_position: the distance the log buckets reach (``max_relative_positions``).

    Returns:
        ``[B, T, S]`` int32 in ``[0, 2R)``.
    """
    rel = q_pos[:, :, None].astype(jnp.int32) - k_pos[:, None, :].astype(jnp.int32)
    if bucket_size > 0 and max_position > 0:
        rel = make_log_bucket_position(rel, bucket_size, max_position)
    return jnp.clip(rel + span, 0, 2 * span - 1)


def disentangled_scale(head_dim: int, pos_att_type: tuple[str, ...]) -> float:
    """The logit scale ``1 / sqrt(H * (1 + A))``, A the number of position terms (c2p, p2c)."""
    return 1.0 / math.sqrt(head_dim * (1 + len(pos_att_type)))


def position_projection_specs(
    d: int, n_heads: int, head_dim: int, pos_att_type: tuple[str, ...], *, std: float = 0.02
) -> dict:
    """Declares the separate projections of the relative embeddings (``share_att_key=False``).

    ``wk [D, N, H]``, ``bk [N, H]`` for c2p and ``wq``, ``bq`` for p2c.
    """
    specs = {}
    for term, name in (("c2p", "k"), ("p2c", "q")):
        if term in pos_att_type:
            specs[f"w{name}"] = ParamSpec(
                (d, n_heads, head_dim),
                logical_axes=("embed", "heads", "head_dim"),
                init=normal(std),
            )
            specs[f"b{name}"] = ParamSpec(
                (n_heads, head_dim), logical_axes=("heads", "head_dim"), init=zeros
            )
    return specs


def project_relative(
    params: dict, rel_embed: jax.Array, pos_att_type: tuple[str, ...]
) -> tuple[jax.Array | None, jax.Array | None]:
    """Projects the relative table ``[2R, D]`` for the p2c (query) and c2p (key) terms.

    Args:
        params: the attention params (``share_att_key``: ``wq, bq, wk, bk``) or those of
            :func:`position_projection_specs`.
        rel_embed: ``[2R, D]`` relative-position embeddings.
        pos_att_type: the terms in use.

    Returns:
        ``(rel_q, rel_k)``, each ``[2R, N, H]``, or None where its term is not in use.
    """

    def project(name):
        out = linear.einsum("rd,dnh->rnh", rel_embed, params[f"w{name}"])
        return out + params[f"b{name}"].astype(rel_embed.dtype)

    return (
        project("q") if "p2c" in pos_att_type else None,
        project("k") if "c2p" in pos_att_type else None,
    )


def disentangled_bias(
    q: jax.Array,
    k: jax.Array,
    rel_q: jax.Array | None,
    rel_k: jax.Array | None,
    index: jax.Array,
) -> jax.Array:
    """The c2p and p2c logit terms (unscaled), to add to ``q . k``.

    Args:
        q: ``[B, T, N, H]`` queries.
        k: ``[B, S, N, H]`` keys.
        rel_q: ``[2R, N, H]`` relative table through the query projection (p2c), or None.
        rel_k: ``[2R, N, H]`` relative table through the key projection (c2p), or None.
        index: ``[B, T, S]`` from :func:`relative_index`.

    Returns:
        ``[B, N, T, S]`` float32: ``q_i . rel_k[index[i, j]] + k_j . rel_q[index[i, j]]``.
    """
    b, t, n, _ = q.shape
    s = k.shape[1]
    out = jnp.zeros((b, n, t, s), jnp.float32)
    if rel_k is not None:  # content -> position
        c2p = jnp.einsum("btnh,rnh->bntr", q, rel_k, preferred_element_type=jnp.float32)
        out = out + jnp.take_along_axis(c2p, index[:, None], axis=-1)
    if rel_q is not None:  # position -> content, gathered per key then transposed
        p2c = jnp.einsum("bsnh,rnh->bnsr", k, rel_q, preferred_element_type=jnp.float32)
        p2c = jnp.take_along_axis(p2c, jnp.swapaxes(index, 1, 2)[:, None], axis=-1)
        out = out + jnp.swapaxes(p2c, -1, -2)
    return out
