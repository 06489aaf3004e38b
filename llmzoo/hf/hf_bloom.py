"""Hugging Face map for BLOOM (BigScience, 2022): ALiBi, an embedding LayerNorm, q/k/v fused per
head (``[N, 3, H]`` rows, as GPT-NeoX), a GELU-tanh MLP of width 4 D, tied embeddings.

BLOOM's ``config.json`` has no position limit (ALiBi needs none); llmzoo's ``max_seq_len`` travels
as ``seq_length``, the key of BigScience's Megatron configs.
"""

from __future__ import annotations

from llmzoo.errors import CheckpointError
from llmzoo.hf.hf_common import ARCHITECTURES, Entry, linear_in, linear_out, reshape
from llmzoo.hf.hf_gpt import per_head_qkv
from llmzoo.models.decoder import DecoderConfig


def _first(hf: dict, *keys: str):
    """The value of the first of ``keys`` that ``hf`` holds (older configs spell them apart)."""
    for key in keys:
        if key in hf:
            return hf[key]
    raise KeyError(keys[0])


def bloom_from_hf(hf: dict) -> DecoderConfig:
    if hf.get("apply_residual_connection_post_layernorm"):
        raise CheckpointError(
            "bloom config.json sets apply_residual_connection_post_layernorm, which llmzoo does "
            "not implement; use a checkpoint with it false (every released BLOOM)"
        )
    d = _first(hf, "hidden_size", "n_embed")
    return DecoderConfig(
        family="bloom",
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=_first(hf, "n_layer", "num_hidden_layers"),
        n_heads=_first(hf, "n_head", "num_attention_heads"),
        d_ff=4 * d,
        max_seq_len=int(hf.get("seq_length", 2048)),
        position="alibi",
        norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        mlp="gelu_tanh",
        embed_norm=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        dropout=0.0,
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def bloom_to_hf(cfg: DecoderConfig) -> dict:
    return {
        "model_type": "bloom",
        "architectures": [ARCHITECTURES["bloom"]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "seq_length": cfg.max_seq_len,
        "layer_norm_epsilon": cfg.norm_eps,
        "apply_residual_connection_post_layernorm": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "hidden_dropout": cfg.dropout,
        "attention_dropout": 0.0,
    }


def bloom_entries(cfg: DecoderConfig) -> list[Entry]:
    d, n, h, f = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.d_ff
    p = "transformer.h.{i}."

    def norm(name, leaf, prefix=""):  # LayerNorm weight and bias
        return [
            reshape(prefix + name + ".weight", leaf + "/scale", (d,), (d,)),
            reshape(prefix + name + ".bias", leaf + "/bias", (d,), (d,)),
        ]

    out = [
        reshape("transformer.word_embeddings.weight", "embed/table", (cfg.vocab_size, d), (-1, d)),
        *norm("transformer.word_embeddings_layernorm", "embed_norm"),
        *norm("input_layernorm", "layers/attn_norm", p),
        *per_head_qkv(p + "self_attention.query_key_value", d, n, h, bias=True),
        linear_out(p + "self_attention.dense.weight", "layers/attn/wo", (n, h), d),
        reshape(p + "self_attention.dense.bias", "layers/attn/bo", (d,), (d,)),
        *norm("post_attention_layernorm", "layers/mlp_norm", p),
        linear_in(p + "mlp.dense_h_to_4h.weight", "layers/mlp/w_up", d, (f,)),
        reshape(p + "mlp.dense_h_to_4h.bias", "layers/mlp/b_up", (f,), (f,)),
        linear_out(p + "mlp.dense_4h_to_h.weight", "layers/mlp/w_down", (f,), d),
        reshape(p + "mlp.dense_4h_to_h.bias", "layers/mlp/b_down", (d,), (d,)),
        *norm("transformer.ln_f", "final_norm"),
    ]
    if not cfg.tie_embeddings:
        out.append(linear_in("lm_head.weight", "lm_head/w", d, (cfg.vocab_size,)))
    return out
