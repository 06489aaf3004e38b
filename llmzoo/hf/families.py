"""Per-family maps between Hugging Face checkpoints and llmzoo: config keys and tensor names.

Hugging Face names live here and nowhere else in llmzoo. Each family gives

* ``config_from_hf(hf: dict) -> ModelConfig`` and ``config_to_hf(cfg) -> dict`` (``config.json``);
* ``entries(cfg) -> list[Entry]``: one :class:`Entry` per Hugging Face tensor, naming the llmzoo
  leaves it holds, its shape, and the two layout transforms.

Layouts: a ``torch.nn.Linear`` weight is ``[out, in]``; llmzoo keeps ``[in, out]`` with heads split
out (``wq [D, N, H]``, ``wo [N, H, D]``). GPT-2's ``Conv1D`` is already ``[in, out]`` and fuses
q, k, v side by side; GPT-NeoX fuses them per head (``[N, 3, H]`` rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from llmzoo.config import ModelConfig
from llmzoo.errors import CheckpointError, ConfigError
from llmzoo.hf.hf_bloom import bloom_entries, bloom_from_hf, bloom_to_hf
from llmzoo.hf.hf_common import Entry
from llmzoo.hf.hf_deberta import DEBERTA_OPTIONAL, deberta_entries, deberta_from_hf, deberta_to_hf
from llmzoo.hf.hf_encoder import (
    BASE_PREFIX,
    OPTIONAL,
    albert_from_hf,
    albert_to_hf,
    bert_entries,
    bert_from_hf,
    bert_to_hf,
    canonical_encoder,
)
from llmzoo.hf.hf_gpt import (
    gpt2_entries,
    gpt2_from_hf,
    gpt2_to_hf,
    gpt_neox_entries,
    gpt_neox_from_hf,
    gpt_neox_to_hf,
)
from llmzoo.hf.hf_llama import (
    LLAMA_LIKE,
    llama_like_entries,
    llama_like_from_hf,
    llama_like_to_hf,
)
from llmzoo.hf.hf_longformer import (
    LONGFORMER_OPTIONAL,
    LONGFORMER_PREFIX,
    canonical_longformer,
    longformer_entries,
    longformer_from_hf,
    longformer_to_hf,
)
from llmzoo.hf.hf_mamba import (
    MAMBA_OPTIONAL,
    canonical_mamba,
    mamba_entries,
    mamba_from_hf,
    mamba_to_hf,
)
from llmzoo.hf.hf_rwkv import (
    RWKV_OPTIONAL,
    RWKV_PREFIX,
    canonical_rwkv,
    rwkv_entries,
    rwkv_from_hf,
    rwkv_to_hf,
)
from llmzoo.hf.hf_seq2seq import (
    BART_OPTIONAL,
    T5_OPTIONAL,
    bart_entries,
    bart_from_hf,
    bart_to_hf,
    canonical_seq2seq,
    t5_entries,
    t5_from_hf,
    t5_to_hf,
)
from llmzoo.models.decoder import DecoderConfig

# ---------------------------------------------------------------------------------------------
# Dispatch: one FamilyMap per Hugging Face ``model_type``.


@dataclasses.dataclass(frozen=True)
class FamilyMap:
    """How one Hugging Face ``model_type`` maps onto an llmzoo kind's config and params.

    Attributes:
        from_hf: ``config.json`` dict -> llmzoo model config.
        to_hf: llmzoo model config -> ``config.json`` dict.
        entries: llmzoo model config -> one :class:`Entry` per Hugging Face tensor.
        base_prefix: the prefix that checkpoints saved from the bare base model omit.
        canonical: normalises a config so that equivalent configs compare equal (the export
            check compares ``canonical(cfg)`` with ``canonical(from_hf(to_hf(cfg)))``).
        optional: suffixes of tensors a checkpoint may hold without the map using them (tied
            copies of the embeddings, buffers).
    """

    from_hf: Callable[[dict], ModelConfig]
    to_hf: Callable[[ModelConfig], dict]
    entries: Callable[[ModelConfig], list[Entry]]
    base_prefix: str
    canonical: Callable[[ModelConfig], ModelConfig] = lambda cfg: cfg
    optional: tuple[str, ...] = ()


def _canonical_decoder(cfg: DecoderConfig) -> DecoderConfig:
    return dataclasses.replace(
        cfg,
        n_kv_heads=cfg.kv_heads,
        head_dim=cfg.dim_per_head,
        rope_theta=cfg.rope_theta if cfg.position == "rope" else 0.0,
        rope_fraction=cfg.rope_fraction if cfg.position == "rope" else 1.0,
        rope_scaling=cfg.rope_scaling if cfg.position == "rope" else None,
        norm_bias=cfg.norm_bias if cfg.norm == "layernorm" else False,
    )


def _decoder_family(from_hf, to_hf, entries, prefix: str, tied: str) -> FamilyMap:
    return FamilyMap(from_hf, to_hf, entries, prefix, _canonical_decoder, (tied,))


FAMILIES: dict[str, FamilyMap] = {
    "gpt2": _decoder_family(
        gpt2_from_hf, gpt2_to_hf, gpt2_entries, "transformer.", "lm_head.weight"
    ),
    "gpt_neox": _decoder_family(
        gpt_neox_from_hf, gpt_neox_to_hf, gpt_neox_entries, "gpt_neox.", "embed_out.weight"
    ),
    "bloom": _decoder_family(
        bloom_from_hf, bloom_to_hf, bloom_entries, "transformer.", "lm_head.weight"
    ),
    **{
        f: _decoder_family(
            llama_like_from_hf, llama_like_to_hf, llama_like_entries, "model.", "lm_head.weight"
        )
        for f in LLAMA_LIKE
    },
    **{
        f: FamilyMap(from_hf, to_hf, entries, BASE_PREFIX[f], canonical_encoder, optional)
        for f, from_hf, to_hf, entries, optional in (
            ("bert", bert_from_hf, bert_to_hf, bert_entries, OPTIONAL),
            ("roberta", bert_from_hf, bert_to_hf, bert_entries, OPTIONAL),
            ("albert", albert_from_hf, albert_to_hf, bert_entries, OPTIONAL),
            ("deberta_v2", deberta_from_hf, deberta_to_hf, deberta_entries, DEBERTA_OPTIONAL),
        )
    },
    "t5": FamilyMap(t5_from_hf, t5_to_hf, t5_entries, "", canonical_seq2seq, T5_OPTIONAL),
    "bart": FamilyMap(
        bart_from_hf, bart_to_hf, bart_entries, "model.", canonical_seq2seq, BART_OPTIONAL
    ),
    "mamba": FamilyMap(
        mamba_from_hf, mamba_to_hf, mamba_entries, "backbone.", canonical_mamba, MAMBA_OPTIONAL
    ),
    "rwkv": FamilyMap(
        rwkv_from_hf, rwkv_to_hf, rwkv_entries, RWKV_PREFIX, canonical_rwkv, RWKV_OPTIONAL
    ),
    "longformer": FamilyMap(
        longformer_from_hf,
        longformer_to_hf,
        longformer_entries,
        LONGFORMER_PREFIX,
        canonical_longformer,
        LONGFORMER_OPTIONAL,
    ),
}
# Hugging Face model_type -> llmzoo family, where they are spelled differently.
MODEL_TYPE_ALIASES = {"deberta-v2": "deberta_v2"}
# Buffers some checkpoints store that carry no weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "attention.bias", "attention.masked_bias")
IGNORED_SUFFIXES += ("rotary_emb.inv_freq",)


def family_map(model_type) -> FamilyMap:
    """The map of ``model_type``; the error lists the supported ones."""
    model_type = MODEL_TYPE_ALIASES.get(model_type, model_type)
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"model_type {model_type!r} in config.json is not supported; "
            f"llmzoo converts {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def config_from_hf(hf: dict) -> ModelConfig:
    """Builds the llmzoo config of a Hugging Face ``config.json`` dict."""
    model_type = hf.get("model_type")
    fam = family_map(model_type)
    try:
        return fam.from_hf(hf)
    except KeyError as e:
        raise CheckpointError(
            f"{model_type} config.json lacks key {e.args[0]!r}; re-save it with transformers"
        ) from None


# Fields that do not change what a checkpoint holds (how it trains, or how it decodes: an int8
# KV cache is a choice of the reader).
_TRAINING_ONLY = ("dropout", "init_std", "dtype", "param_dtype", "remat", "kv_cache_dtype")


def config_to_hf(cfg: ModelConfig) -> dict:
    """The Hugging Face ``config.json`` dict of an llmzoo config.

    Raises:
        ConfigError: the config uses a switch its family's Hugging Face model lacks (e.g. a
            sliding window on Llama); the message names the field.
    """
    try:
        fam = family_map(cfg.family)
    except CheckpointError as e:
        raise ConfigError(str(e).replace("in config.json ", "")) from None
    hf = fam.to_hf(cfg)
    back = config_from_hf(hf)
    if type(back) is not type(cfg):
        raise ConfigError(
            f"a {cfg.family} checkpoint loads as kind {back.kind!r}, not {cfg.kind!r}; "
            "pick a family of this kind"
        )
    reset = {k: getattr(type(cfg)(), k) for k in _TRAINING_ONLY if hasattr(cfg, k)}
    want = fam.canonical(dataclasses.replace(cfg, **reset))
    back = fam.canonical(dataclasses.replace(back, **reset))
    for field in dataclasses.fields(want):
        a, b = getattr(want, field.name), getattr(back, field.name)
        if a != b:
            raise ConfigError(
                f"model.{field.name}={a!r} cannot be expressed in a Hugging Face {cfg.family} "
                f"checkpoint (it would load as {b!r}); change it or pick another family"
            )
    return hf


def entries(cfg: ModelConfig) -> list[Entry]:
    """The tensor map of ``cfg``'s family."""
    return family_map(cfg.family).entries(cfg)
