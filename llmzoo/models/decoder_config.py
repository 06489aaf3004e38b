"""The config of kind ``decoder``: :class:`DecoderConfig`, its switches and their checks.

Re-exported by :mod:`llmzoo.models.decoder`, the kind's module.
"""

from __future__ import annotations

import dataclasses

from llmzoo.config import ModelConfig, RopeScaling, check_range
from llmzoo.errors import ConfigError
from llmzoo.layers import attention_impl

HEADS = ("lm", "sequence_classification", "token_classification")
KV_CACHE_DTYPES = ("auto", "int8")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig(ModelConfig):
    """A decoder-only transformer (kind ``decoder``). Families differ only in these switches.

    The shared fields (``remat``, ``scan_layers`` ...) are documented on
    :class:`llmzoo.config.ModelConfig`.

    Attributes:
        family: ``gpt2``, ``llama``, ``mistral``, ``qwen2``, ``gemma``, ``gpt_neox`` or ``bloom``.
        d_model: D.
        n_layers: number of blocks L.
        n_heads: N query heads.
        n_kv_heads: K key/value heads (None: K = N; 1: MQA).
        head_dim: H (None: D / N).
        d_ff: F, the MLP hidden width.
        position: ``learned``, ``rope``, ``alibi``, ``sinusoidal`` or ``none``. ``alibi`` (Press
            et al., 2022; BLOOM) adds ``slope * (k_pos - q_pos)`` to each head's logits on every
            attention path (:func:`llmzoo.layers.positional.alibi_slopes`); like ``rope`` it has
            no position table, so ``max_seq_len`` does not limit the length.
        rope_theta: RoPE base.
        rope_fraction: fraction of H rotated (GPT-NeoX partial rotary).
        rope_scaling: optional :class:`RopeScaling`.
        norm: ``layernorm`` or ``rmsnorm``; norm_eps its epsilon; norm_bias LayerNorm bias.
        norm_zero_centered: RMSNorm scales by ``1 + w`` (Gemma).
        mlp: activation or gated kind (``gelu_tanh``, ``swiglu``, ``geglu`` ...); mlp_bias.
        qkv_bias, out_bias: biases on the q/k/v and output projections.
        parallel_residual: ``x + attn(norm1(x)) + mlp(norm2(x))`` (GPT-NeoX, GPT-J).
        sliding_window: attend to at most this many most recent keys (Mistral).
        tie_embeddings: the LM head is the transposed embedding table.
        embed_scale: multiply embeddings by sqrt(D) (Gemma).
        embed_norm: normalise the embeddings (after any position embedding) with a norm of
            kind ``norm`` before the first block (BLOOM's ``word_embeddings_layernorm``).
        attn_scale: logit scale override (default H ** -0.5).
        init_std: init std; output projections use ``init_std / sqrt(2 L)`` (GPT-2).
        attention_impl: ``dense``, ``blockwise`` (O(T) memory), ``cudnn``, ``splash`` or ``auto``;
            see :mod:`llmzoo.layers.attention_impl`. Decoding with a KV cache uses its own loop
            over the filled slots (:mod:`llmzoo.layers.kv_cache`).
        head: what the final states feed: ``lm`` (next-token logits), ``sequence_classification``
            (``score/w [D, C]`` on each row's last real token; a reward model has C = 1) or
            ``token_classification`` (``score/{w, b}`` on every token), as Hugging Face's
            ``*ForCausalLM``, ``*ForSequenceClassification`` and ``*ForTokenClassification``.
        num_labels: C, classes of the classification heads.
        value_head: also predict a scalar value per token (``value_head/{w [D, 1], b [1]}``,
            PPO's critic, as TRL's ``ValueHead``).
        kv_cache_dtype: what the KV cache of generation stores: ``auto`` (the compute dtype) or
            ``int8`` (symmetric round to nearest with a float32 scale per token and KV head,
            dequantized block by block as attention reads it; see
            :mod:`llmzoo.layers.kv_cache`).
    """

    FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "gemma", "gpt_neox", "bloom")

    kind: str = "decoder"
    family: str = "gpt2"
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int = 3072
    position: str = "learned"
    rope_theta: float = 10000.0
    rope_fraction: float = 1.0
    rope_scaling: RopeScaling | None = None
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True
    norm_zero_centered: bool = False
    mlp: str = "gelu_tanh"
    mlp_bias: bool = True
    qkv_bias: bool = True
    out_bias: bool = True
    parallel_residual: bool = False
    sliding_window: int | None = None
    tie_embeddings: bool = True
    embed_scale: bool = False
    embed_norm: bool = False
    attn_scale: float | None = None
    init_std: float = 0.02
    attention_impl: str = "dense"
    head: str = "lm"
    num_labels: int = 2
    value_head: bool = False
    kv_cache_dtype: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        for key in ("d_model", "n_layers", "n_heads", "d_ff", "num_labels"):
            check_range(f"model.{key}", getattr(self, key), lo=1)
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} does not divide model.d_model={self.d_model}; "
                "choose n_heads that divides d_model or set model.head_dim"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}"
            )
        if self.position not in ("learned", "rope", "alibi", "sinusoidal", "none"):
            raise ConfigError(
                f"model.position={self.position!r} is unknown; "
                "use learned, rope, alibi, sinusoidal or none"
            )
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ConfigError(f"model.norm={self.norm!r} is unknown; use layernorm or rmsnorm")
        attention_impl.check_attention_impl(self.attention_impl)
        if self.head not in HEADS:
            raise ConfigError(f"model.head={self.head!r} is unknown; use {', '.join(HEADS)}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ConfigError(
                f"model.kv_cache_dtype={self.kv_cache_dtype!r} is unknown; use auto or int8"
            )

    @property
    def position_limit(self) -> int | None:
        return self.max_seq_len if self.position == "learned" else None

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.dim_per_head * self.rope_fraction)
