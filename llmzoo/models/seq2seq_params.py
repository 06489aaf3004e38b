"""The parameters of kind ``seq2seq``: :func:`param_specs` and :func:`init` (the tree is drawn in
:mod:`llmzoo.models.seq2seq`'s docstring).

Each stack (encoder, decoder) holds its layers stacked on a leading axis, its position table or
T5's relative-bias table, and optional embedding and final norms; the decoder's layers add
cross-attention. The embedding table is shared by both stacks and a tied LM head.
"""

from __future__ import annotations

import math

import jax

from llmzoo.layers import attention as attn_lib
from llmzoo.layers.mlp import mlp_specs
from llmzoo.layers.norms import norm_specs
from llmzoo.models.seq2seq_config import Seq2SeqConfig
from llmzoo.params import ParamSpec, init_params, normal, stack, with_dtype, zeros


def _stack_specs(cfg: Seq2SeqConfig, n_layers: int, *, cross: bool) -> dict:
    """The param specs of one stack (encoder, or decoder with ``cross`` attention)."""
    d, std = cfg.d_model, cfg.init_std
    out_std = std / math.sqrt(2 * n_layers)
    norm = dict(kind=cfg.norm, bias=cfg.bias)
    attn = dict(qkv_bias=cfg.bias, out_bias=cfg.bias, std=std, out_std=out_std)
    n, h = cfg.n_heads, cfg.dim_per_head
    block = {
        "attn_norm": norm_specs(d, **norm),
        "attn": attn_lib.attention_specs(d, n, n, h, **attn),
    }
    if cross:
        block["cross_norm"] = norm_specs(d, **norm)
        block["cross_attn"] = attn_lib.attention_specs(d, n, n, h, **attn)
    block["mlp_norm"] = norm_specs(d, **norm)
    block["mlp"] = mlp_specs(d, cfg.d_ff, cfg.mlp, bias=cfg.bias, std=std, out_std=out_std)
    specs = {"layers": stack(block, n_layers)}
    if cfg.position == "learned":
        rows = cfg.max_seq_len + cfg.position_offset
        specs["pos_embed"] = {
            "table": ParamSpec((rows, d), logical_axes=(None, "embed"), init=normal(0.01))
        }
    else:
        specs["relative_bias"] = {
            "table": ParamSpec(
                (cfg.relative_buckets, n), logical_axes=(None, "heads"), init=normal(std)
            )
        }
    if cfg.embed_norm:
        specs["embed_norm"] = norm_specs(d, **norm)
    if cfg.final_norm:
        specs["final_norm"] = norm_specs(d, **norm)
    return specs


def param_specs(cfg: Seq2SeqConfig) -> dict:
    """Declares every parameter of the model as a :class:`ParamSpec` tree."""
    d, v = cfg.d_model, cfg.vocab_size
    specs = {
        "embed": {
            "table": ParamSpec((v, d), logical_axes=("vocab", "embed"), init=normal(cfg.init_std))
        },
        "encoder": _stack_specs(cfg, cfg.n_encoder_layers, cross=False),
        "decoder": _stack_specs(cfg, cfg.n_decoder_layers, cross=True),
    }
    if not cfg.tie_embeddings:
        specs["lm_head"] = {
            "w": ParamSpec((d, v), logical_axes=("embed", "vocab"), init=normal(cfg.init_std))
        }
    if cfg.final_logits_bias:
        specs["final_logits_bias"] = {"bias": ParamSpec((v,), logical_axes=("vocab",), init=zeros)}
    return with_dtype(specs, cfg.param_dtype)


def init(key: jax.Array, cfg: Seq2SeqConfig, shardings=None) -> dict:
    """Initialises params, optionally straight onto ``shardings`` (``sharding.param_shardings``)."""
    return init_params(key, param_specs(cfg), shardings)


__all__ = ["param_specs", "init"]
