"""The switch between attention implementations (``model.attention_impl``).

A model chooses its implementation with ``model.attention_impl`` (:data:`ATTENTION_IMPLS`):

- ``dense``: :func:`~llmzoo.layers.attention.dot_product_attention` over a [B, 1, T, S] mask
  built once per forward pass (O(T S) memory; fastest at short lengths).
- ``blockwise``: :func:`~llmzoo.layers.blockwise.blockwise_attention`, any backend.
- ``cudnn``: ``jax.nn.dot_product_attention(implementation='cudnn')`` (fused flash attention;
  the boolean mask is still materialised and passed to it). Where it cannot run (no GPU, float32,
  an unsupported head width, an odd length) it falls back to ``blockwise`` with a one-time warning.
- ``splash``: the Pallas splash-attention kernel on TPU (:mod:`llmzoo.layers.fused`; no mask is
  materialised). Where it cannot run (not a TPU, ALiBi, lengths not divisible by 128) it falls
  back to ``blockwise`` with a one-time warning.
- ``auto``: ``cudnn`` or ``splash`` (for head widths H divisible by 128) where one can run,
  else ``blockwise`` from :data:`AUTO_BLOCKWISE_MIN_LEN` keys on, else ``dense``.

Models build an :class:`AttentionPlan` once per forward pass (outside the scan over layers) with
:func:`plan_attention`, and every layer calls :func:`attend` with it.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp

from llmzoo.errors import ConfigError
from llmzoo.layers import blockwise, fused
from llmzoo.layers.attention import MaskRule, attention_weights, dot_product_attention
from llmzoo.layers.positional import alibi_bias

ATTENTION_IMPLS = ("dense", "blockwise", "cudnn", "splash", "auto")
AUTO_BLOCKWISE_MIN_LEN = 2048  # ``auto`` leaves ``dense`` from this many keys on
# ``auto`` picks splash only for head widths that fill the TPU's 128 lanes, the case MaxText runs
# (older kernels rejected narrower heads); ``splash`` itself tries any width.
AUTO_SPLASH_HEAD_MULTIPLE = 128
_F32 = jnp.float32
_warned: set[str] = set()


def check_attention_impl(impl: str, *, dense_bias: str | None = None) -> None:
    """Validates ``model.attention_impl`` in a kind config's ``__post_init__``.

    Args:
        impl: the configured value.
        dense_bias: what the model adds as a learned ``[B, N, T, S]`` bias (T5's relative
            buckets, DeBERTa's disentangled terms), which only ``dense`` computes; None if none.

    Raises:
        ConfigError: an unknown value, or ``blockwise``/``cudnn``/``splash`` with a dense bias.
    """
    if impl not in ATTENTION_IMPLS:
        raise ConfigError(
            f"model.attention_impl={impl!r} is unknown; use one of {', '.join(ATTENTION_IMPLS)}"
        )
    if dense_bias and impl in ("blockwise", "cudnn", "splash"):
        raise ConfigError(
            f"model.attention_impl={impl!r} cannot compute {dense_bias}, a learned [B, N, T, S] "
            "bias; use model.attention_impl=dense (or auto, which picks dense for this model)"
        )


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_impl(
    impl: str,
    *,
    dtype: str | jnp.dtype,
    head_dim: int,
    t: int,
    s: int,
    rule: MaskRule | None = None,
    alibi: bool = False,
) -> str:
    """The implementation that will run: ``dense``, ``blockwise``, ``cudnn`` or ``splash``.

    ``cudnn`` or ``splash`` where it cannot run falls back to ``blockwise`` with a one-time
    warning (see the module doc). ``splash`` needs the mask ``rule``; without one it cannot run.
    """
    problems = {
        "cudnn": lambda: fused.cudnn_problem(dtype, head_dim, t, s),
        "splash": lambda: (
            "no mask rule" if rule is None else fused.splash_problem(rule, alibi=alibi)
        ),
    }
    if impl in problems:
        problem = problems[impl]()
        if problem:
            _warn_once(
                f"model.attention_impl={impl!r}: {problem}; using blockwise attention instead"
            )
            return "blockwise"
    if impl == "auto":
        if problems["cudnn"]() is None:
            return "cudnn"
        if head_dim % AUTO_SPLASH_HEAD_MULTIPLE == 0 and problems["splash"]() is None:
            return "splash"
        return "blockwise" if s >= AUTO_BLOCKWISE_MIN_LEN else "dense"
    return impl


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionPlan:
    """How every layer of one forward pass attends; from :func:`plan_attention`.

    Attributes:
        impl: ``dense``, ``blockwise``, ``cudnn`` or ``splash`` (resolved; static).
        block_size: the blockwise block size (static).
        rule: the mask rule.
        mask: ``[B, 1, T, S]`` bool (dense and cudnn only, else None).
        bias: ``[B, N, T, S]`` float32 ALiBi bias (dense and cudnn only, else None).
        alibi_slopes: ``[N]`` (blockwise only, else None; splash takes no ALiBi).
    """

    impl: str = dataclasses.field(metadata=dict(static=True))
    block_size: int = dataclasses.field(metadata=dict(static=True))
    rule: MaskRule
    mask: jax.Array | None = None
    bias: jax.Array | None = None
    alibi_slopes: jax.Array | None = None


def plan_attention(
    rule: MaskRule,
    *,
    impl: str = "dense",
    dtype: str | jnp.dtype = "float32",
    head_dim: int,
    alibi_slopes: jax.Array | None = None,
    block_size: int | None = None,
) -> AttentionPlan:
    """Resolves ``impl`` and builds what it needs, once per forward pass.

    Args:
        rule: the mask rule; ``q_pos [B, T]`` and ``k_pos [B, S]`` give the lengths.
        impl: one of :data:`ATTENTION_IMPLS`.
        dtype: the compute dtype (cuDNN needs bfloat16 or float16).
        head_dim: H.
        alibi_slopes: ``[N]`` ALiBi slopes, or None.
        block_size: queries and keys per block of the blockwise kernel (None:
            :data:`~llmzoo.layers.blockwise.DEFAULT_BLOCK`, read at call time).

    Returns:
        An :class:`AttentionPlan`: dense and cudnn hold the materialised mask (and ALiBi bias),
        blockwise and splash only the rule.
    """
    t, s = rule.q_pos.shape[1], rule.k_pos.shape[1]
    block_size = blockwise.DEFAULT_BLOCK if block_size is None else block_size
    alibi = alibi_slopes is not None
    impl = resolve_impl(impl, dtype=dtype, head_dim=head_dim, t=t, s=s, rule=rule, alibi=alibi)
    if impl == "splash":
        return AttentionPlan(impl, block_size, rule)
    if impl == "blockwise":
        slopes = None if alibi_slopes is None else jnp.asarray(alibi_slopes, _F32)
        return AttentionPlan(impl, block_size, rule, alibi_slopes=slopes)
    bias = None if alibi_slopes is None else alibi_bias(alibi_slopes, rule.q_pos, rule.k_pos)
    return AttentionPlan(impl, block_size, rule, rule.dense_mask(), bias)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    plan: AttentionPlan,
    *,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Attention by the plan's implementation.

    Args:
        q: ``[B, T, N, H]``.
        k, v: ``[B, S, K, H]`` with N a multiple of K.
        plan: from :func:`plan_attention`.
        bias: an extra ``[B, N, T, S]`` bias (T5, DeBERTa); ``dense`` plans only.
        scale: logit scale, default ``H ** -0.5``.

    Returns:
        ``[B, T, N, H]`` in the dtype of ``q``.
    """
    if bias is not None and plan.impl != "dense":
        raise ValueError(
            f"a dense [B, N, T, S] bias needs the dense implementation, not {plan.impl}"
        )
    if plan.impl == "blockwise":
        size = plan.block_size
        return blockwise.blockwise_attention(
            q,
            k,
            v,
            plan.rule,
            alibi_slopes=plan.alibi_slopes,
            scale=scale,
            block_q=size,
            block_k=size,
        )
    if plan.impl == "splash":
        return fused.splash_attention(q, k, v, plan.rule, scale=scale)
    if plan.bias is not None:
        bias = plan.bias if bias is None else plan.bias + bias
    if plan.impl == "cudnn":
        return fused.cudnn_attention(q, k, v, plan.mask, bias, scale)
    return dot_product_attention(q, k, v, mask=plan.mask, bias=bias, scale=scale)


def attention_probs(
    q: jax.Array,
    k: jax.Array,
    plan: AttentionPlan,
    *,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """The attention probabilities :func:`attend` uses under ``plan``, whatever its
    implementation: float32 ``[B, N, T, S]`` (materialised; for inspection, not training).

    Args:
        q: ``[B, T, N, H]``.
        k: ``[B, S, K, H]``.
        plan: from :func:`plan_attention`.
        bias: an extra ``[B, N, T, S]`` bias (T5, DeBERTa).
        scale: logit scale, default ``H ** -0.5``.
    """
    mask = plan.mask if plan.mask is not None else plan.rule.dense_mask()
    if plan.bias is not None:
        bias = plan.bias if bias is None else plan.bias + bias
    elif plan.alibi_slopes is not None:
        alibi = alibi_bias(plan.alibi_slopes, plan.rule.q_pos, plan.rule.k_pos)
        bias = alibi if bias is None else alibi + bias
    return attention_weights(q, k, mask=mask, bias=bias, scale=scale)
