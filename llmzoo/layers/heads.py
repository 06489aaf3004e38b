"""Task heads over encoder states (BERT family, Devlin et al. 2019): dense layers, the first-token
pooler, the masked-LM head tied to the word embeddings, and sentence pooling.

Shapes: B batch, T tokens, D model width, E embedding width, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmzoo.layers import linear
from llmzoo.layers.mlp import ACTIVATIONS, activation_fn
from llmzoo.layers.norms import layer_norm
from llmzoo.params import ParamSpec, normal, zeros

# Pooler activations: the MLP ones plus tanh (BERT's pooler).
POOLER_ACTIVATIONS = ("tanh", *ACTIVATIONS)


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
    logits = jnp.einsum("bte,ve->btv", h, table.astype(h.dtype), preferred_element_type=jnp.float32)
    return logits + params["b_out"].astype(jnp.float32)


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``hidden [B, T, D]`` over tokens whose ``mask [B, T]`` (segment ids or an
    attention mask) is non-zero, as sentence-transformers pools: ``[B, D]`` float32."""
    m = (mask != 0).astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
    return total / jnp.maximum(m.sum(axis=1), 1e-9)


def cls_pool(hidden: jax.Array) -> jax.Array:
    """The first token's state (``[CLS]`` / ``<s>``): ``hidden [B, T, D]`` -> ``[B, D]``."""
    return hidden[:, 0]
