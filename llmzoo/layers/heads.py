"""Output heads: the language-model head (tied to the word embeddings or not), and the task heads
over encoder states (BERT family, Devlin et al. 2019): dense layers, the first-token pooler, the
masked-LM head and sentence pooling.

Shapes: B batch, T tokens, D model width, E embedding width, V vocabulary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llmzoo.layers import linear
from llmzoo.layers.mlp import ACTIVATIONS, activation_fn
from llmzoo.layers.norms import layer_norm
from llmzoo.params import ParamSpec, normal, zeros

# Pooler activations: the MLP ones plus tanh (BERT's pooler).
POOLER_ACTIVATIONS = ("tanh", *ACTIVATIONS)


def lm_head(params: dict, x: jax.Array, *, tied: bool, dtype=jnp.float32) -> jax.Array:
    """The language-model head: final states ``x [..., D]`` -> logits ``[..., V]`` in ``dtype``.

    Args:
        params: the model's params, with ``embed/table [V, D]`` if ``tied``, else
            ``lm_head/w [D, V]``.
        x: the final (normed) states, in the compute dtype.
        tied: multiply by the transposed word embeddings (``tie_embeddings``).
        dtype: the logits' dtype, in which the product accumulates.
    """
    if tied:
        return tied_logits(x, params["embed"]["table"], dtype)
    w = params["lm_head"]["w"].astype(x.dtype)
    flat = x.reshape(-1, x.shape[-1])  # one 2-D matmul, as in linear.einsum (see there)
    logits = jnp.einsum("nd,dv->nv", flat, w, preferred_element_type=dtype)
    return logits.reshape(*x.shape[:-1], -1)


def tied_logits(x: jax.Array, table: jax.Array, dtype=jnp.float32) -> jax.Array:
    """``x [..., E]`` times the transposed word embeddings ``table [V, E]``: ``[..., V]`` logits.

    The product runs in the dtype of ``x`` and accumulates in ``dtype``. The gradients equal
    autodiff's, but the table's is computed as ``(x^T g)^T``: contracting the tokens of the small
    ``x`` with the ``[..., V]`` logit gradient ``g`` as it lies, then transposing the ``[E, V]``
    result. Autodiff's ``g^T x`` makes XLA:CPU write ``g``, the largest array of a language
    model's step, a second time transposed, which costs about 6% of a small GPT's train step
    (``benchmarks/train_step.py``).
    """
    return _tied_logits(x, table.astype(x.dtype), jnp.dtype(dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _tied_logits(x, table, dtype):
    return jnp.einsum("...e,ve->...v", x, table, preferred_element_type=dtype)


def _tied_logits_fwd(x, table, dtype):
    return _tied_logits(x, table, dtype), (x, table)


def _tied_logits_bwd(dtype, residuals, g):
    x, table = residuals
    dx = jnp.einsum("...v,ve->...e", g, table)
    flat_x, flat_g = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    d_table = jnp.einsum("ne,nv->ev", flat_x, flat_g).T
    return dx.astype(x.dtype), d_table.astype(table.dtype)


_tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


def dense_specs(
    d_in: int, d_out: int, *, axes=("embed", None), std: float = 0.02, bias: bool = True
) -> dict:
    """Declares a dense layer: ``w [d_in, d_out]`` (+ ``b [d_out]``)."""
    specs = {"w": ParamSpec((d_in, d_out), logical_axes=axes, init=normal(std))}
    if bias:
        specs["b"] = ParamSpec((d_out,), logical_axes=(axes[1],), init=zeros)
    return specs


def dense(params: dict, x: jax.Array) -> jax.Array:
    """``x [..., I] @ w [I, O] (+ b)`` -> ``[..., O]`` in the dtype of ``x``."""
    out = linear.einsum("...i,io->...o", x, params["w"])
    return out + params["b"].astype(x.dtype) if "b" in params else out


def pooler_activation(name: str):
    """``tanh`` or one of the MLP activations (DeBERTa's ContextPooler uses ``gelu``)."""
    return jnp.tanh if name == "tanh" else activation_fn(name)


def mlm_logits(
    params: dict,
    norm_params: dict,
    x: jax.Array,
    table: jax.Array,
    *,
    activation: str,
    eps: float,
) -> jax.Array:
    """The BERT masked-LM head: dense D -> E, activation, LayerNorm, then the transposed word
    embeddings plus an output bias.

    Args:
        params: ``{'w': [D, E], 'b': [E], 'b_out': [V]}``.
        norm_params: the LayerNorm over E.
        x: ``[B, T, D]`` final hidden states.
        table: ``[V, E]`` word embeddings (the tied decoder).
        activation: the transform's activation (see :mod:`llmzoo.layers.mlp`).
        eps: LayerNorm epsilon.

    Returns:
        ``[B, T, V]`` float32 logits.
    """
    h = layer_norm(norm_params, activation_fn(activation)(dense(params, x)), eps=eps)
    return tied_logits(h, table) + params["b_out"].astype(jnp.float32)


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``hidden [B, T, D]`` over tokens whose ``mask [B, T]`` (segment ids or an
    attention mask) is non-zero, as sentence-transformers pools: ``[B, D]`` float32."""
    m = (mask != 0).astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
    return total / jnp.maximum(m.sum(axis=1), 1e-9)


def cls_pool(hidden: jax.Array) -> jax.Array:
    """The first token's state (``[CLS]`` / ``<s>``): ``hidden [B, T, D]`` -> ``[B, D]``."""
    return hidden[:, 0]
