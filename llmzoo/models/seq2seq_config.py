"""The config of kind ``seq2seq``: :class:`Seq2SeqConfig`, its switches and their checks.

Re-exported by :mod:`llmzoo.models.seq2seq`, the kind's module.
"""

from __future__ import annotations

import dataclasses

from llmzoo.config import ModelConfig, check_range
from llmzoo.errors import ConfigError
from llmzoo.layers import attention_impl
from llmzoo.layers.mlp import ACTIVATIONS, GATED

CHOICES = {
    "position": ("relative", "learned"),
    "norm": ("rmsnorm", "layernorm"),
    "norm_position": ("pre", "post"),
    "mlp": (*ACTIVATIONS, *GATED),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Seq2SeqConfig(ModelConfig):
    """An encoder-decoder transformer (kind ``seq2seq``). Families differ only in these switches.

    The shared fields (``remat``, ``scan_layers`` ...) are documented on
    :class:`llmzoo.config.ModelConfig`. The defaults are T5 v1.0 small.

    Attributes:
        family: ``t5`` or ``bart``.
        d_model: D.
        n_heads: N heads (encoder, decoder and cross-attention alike).
        head_dim: H (None: D / N; T5's ``d_kv``).
        d_ff: F, the MLP hidden width.
        n_encoder_layers, n_decoder_layers: the depths of the two stacks (may differ).
        position: ``relative`` (T5 buckets: a bias computed once per stack from its first layer's
            table, bidirectional in the encoder, causal in the decoder) or ``learned`` (BART).
        relative_buckets, relative_max_distance: T5 bucketing (``relative`` only).
        position_offset: learned tables start this many rows before position 0 (BART: 2).
        norm: ``rmsnorm`` or ``layernorm``; norm_eps its epsilon.
        norm_position: ``pre`` (T5: ``x + f(norm(x))``) or ``post`` (BART: ``norm(x + f(x))``).
        embed_norm: normalise the embeddings before the first layer (BART layernorm_embedding).
        final_norm: normalise each stack's output (T5).
        mlp: activation or gated kind (T5 v1.0 ``relu``, v1.1 ``geglu``, BART ``gelu``).
        bias: biases on every projection and LayerNorm (BART; T5 has none).
        tie_embeddings: the LM head is the transposed embedding table.
        decoder_output_scale: multiply the decoder output by D ** -0.5 before the LM head
            (T5 v1.0, with its tied head).
        embed_scale: multiply embeddings by sqrt(D) (BART ``scale_embedding``).
        final_logits_bias: a learned bias on the logits (BART).
        attn_scale: logit scale override (None: H ** -0.5; T5 uses 1.0).
        pad_id, eos_id: the padding and end-of-sequence ids.
        decoder_start_id: the first decoder input (T5: the pad id 0; BART: the eos id 2).
        attention_impl: ``dense``, ``blockwise`` (O(T) memory), ``cudnn``, ``splash`` or ``auto``;
            see :mod:`llmzoo.layers.attention_impl`. T5's relative bias needs ``dense``
            self-attention (``auto`` then changes cross-attention only); cached decoding runs
            ``dense``.
    """

    FAMILIES = ("t5", "bart")

    kind: str = "seq2seq"
    family: str = "t5"
    vocab_size: int = 32128
    max_seq_len: int = 512
    d_model: int = 512
    n_heads: int = 8
    head_dim: int | None = None
    d_ff: int = 2048
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    position: str = "relative"
    relative_buckets: int = 32
    relative_max_distance: int = 128
    position_offset: int = 0
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    norm_position: str = "pre"
    embed_norm: bool = False
    final_norm: bool = True
    mlp: str = "relu"
    bias: bool = False
    tie_embeddings: bool = True
    decoder_output_scale: bool = True
    embed_scale: bool = False
    final_logits_bias: bool = False
    attn_scale: float | None = 1.0
    pad_id: int | None = 0
    eos_id: int | None = 1
    decoder_start_id: int | None = 0
    attention_impl: str = "dense"

    def __post_init__(self):
        super().__post_init__()
        if self.decoder_start_id is None:
            raise ConfigError(
                "model.decoder_start_id is not set; T5 starts decoding from the pad id 0, BART "
                "from the eos id 2; set it"
            )
        for key in ("d_model", "n_heads", "d_ff", "n_encoder_layers", "n_decoder_layers"):
            check_range(f"model.{key}", getattr(self, key), lo=1)
        check_range("model.relative_buckets", self.relative_buckets, lo=2)
        check_range("model.relative_max_distance", self.relative_max_distance, lo=1)
        check_range("model.position_offset", self.position_offset, lo=0)
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} does not divide model.d_model={self.d_model}; "
                "choose n_heads that divides d_model or set model.head_dim"
            )
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"model.{key}={getattr(self, key)!r} is unknown; use {', '.join(allowed)}"
                )
        rel = "T5's relative position bias" if self.position == "relative" else None
        attention_impl.check_attention_impl(self.attention_impl, dense_bias=rel)

    @property
    def position_limit(self) -> int | None:
        return self.max_seq_len if self.position == "learned" else None

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads
