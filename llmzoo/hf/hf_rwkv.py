"""Hugging Face map for RWKV-4 (``RwkvForCausalLM``, ``model_type`` ``rwkv``).

``time_decay`` and ``time_first`` are stored as transformers stores them (the decay per step is
``-exp(time_decay)``); the ``time_mix_*`` vectors are ``[1, 1, D]`` there and ``[D]`` here.
"""

from __future__ import annotations

import dataclasses

from llmzoo.hf.hf_common import Entry, linear_in, linear_out, reshape
from llmzoo.models.rwkv import RwkvConfig

RWKV_PREFIX = "rwkv."
RWKV_OPTIONAL = ("head.weight",)  # a tied checkpoint may keep its copy of the embeddings


def rwkv_from_hf(hf: dict) -> RwkvConfig:
    d = hf["hidden_size"]
    return RwkvConfig(
        family="rwkv",
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["num_hidden_layers"],
        d_attn=hf.get("attention_hidden_size") or d,
        d_ff=hf.get("intermediate_size") or 4 * d,
        max_seq_len=hf.get("context_length", 1024),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        rescale_every=max(int(hf.get("rescale_every", 6)), 0),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dropout=0.0,
    )


def rwkv_to_hf(cfg: RwkvConfig) -> dict:
    return {
        "model_type": "rwkv",
        "architectures": ["RwkvForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "attention_hidden_size": cfg.attn_width,
        "intermediate_size": cfg.ffn_width,
        "context_length": cfg.max_seq_len,
        "layer_norm_epsilon": cfg.norm_eps,
        "rescale_every": cfg.rescale_every,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def canonical_rwkv(cfg: RwkvConfig) -> RwkvConfig:
    """``d_attn`` and ``d_ff`` resolved, and the training-form ``chunk_size`` reset: configs that
    compute the same compare equal."""
    return dataclasses.replace(
        cfg, d_attn=cfg.attn_width, d_ff=cfg.ffn_width, chunk_size=RwkvConfig.chunk_size
    )


def _norm(name: str, leaf: str, d: int) -> list[Entry]:
    return [
        reshape(f"{name}.weight", f"{leaf}/scale", (d,), (d,)),
        reshape(f"{name}.bias", f"{leaf}/bias", (d,), (d,)),
    ]


def rwkv_entries(cfg: RwkvConfig) -> list[Entry]:
    d, a, f = cfg.d_model, cfg.attn_width, cfg.ffn_width
    p, att, ffn = "rwkv.blocks.{i}.", "rwkv.blocks.{i}.attention.", "rwkv.blocks.{i}.feed_forward."
    out = [
        reshape("rwkv.embeddings.weight", "embed/table", (cfg.vocab_size, d), (-1, d)),
        *_norm("rwkv.blocks.0.pre_ln", "pre_norm", d),
        *_norm(p + "ln1", "layers/att_norm", d),
        *_norm(p + "ln2", "layers/ffn_norm", d),
        reshape(att + "time_decay", "layers/att/time_decay", (a,), (a,)),
        reshape(att + "time_first", "layers/att/time_first", (a,), (a,)),
    ]
    for block, leaf, names in (
        (att, "layers/att", ("key", "value", "receptance")),
        (ffn, "layers/ffn", ("key", "receptance")),
    ):
        out += [
            reshape(f"{block}time_mix_{n}", f"{leaf}/mix_{n[0]}", (1, 1, d), (d,)) for n in names
        ]
    out += [
        linear_in(att + "key.weight", "layers/att/w_k", d, (a,)),
        linear_in(att + "value.weight", "layers/att/w_v", d, (a,)),
        linear_in(att + "receptance.weight", "layers/att/w_r", d, (a,)),
        linear_out(att + "output.weight", "layers/att/w_o", (a,), d),
        linear_in(ffn + "key.weight", "layers/ffn/w_k", d, (f,)),
        linear_in(ffn + "receptance.weight", "layers/ffn/w_r", d, (d,)),
        linear_out(ffn + "value.weight", "layers/ffn/w_v", (f,), d),
        *_norm("rwkv.ln_out", "final_norm", d),
    ]
    if not cfg.tie_embeddings:
        out.append(linear_in("head.weight", "lm_head/w", d, (cfg.vocab_size,)))
    return out
