"""The config of kind ``encoder``: :class:`EncoderConfig`, its switches and their checks.

Re-exported by :mod:`llmzoo.models.encoder`, the kind's module.
"""

from __future__ import annotations

import dataclasses

from llmzoo.config import ModelConfig, check_range
from llmzoo.errors import ConfigError
from llmzoo.layers import attention_impl, disentangled
from llmzoo.layers.heads import POOLER_ACTIVATIONS
from llmzoo.layers.mlp import ACTIVATIONS

HEADS = ("none", "mlm", "pretraining", "sequence_classification", "token_classification")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderConfig(ModelConfig):
    """A bidirectional encoder (kind ``encoder``). Families differ only in these switches.

    The shared fields (``remat``, ``scan_layers`` ...) are documented on
    :class:`llmzoo.config.ModelConfig`; ``max_seq_len`` is the longest input,
    whatever the position-table offset.

    Attributes:
        family: ``bert``, ``roberta``, ``albert`` or ``deberta_v2``.
        d_model: D. n_layers: L. n_heads: N (H = D / N). d_ff: F.
        embed_dim: E, the embedding width, projected to D (ALBERT, DeBERTa-v2 with
            ``embedding_size``); None: D wide and not projected.
        embed_norm_after_proj: the embedding LayerNorm acts on D after the projection (DeBERTa)
            instead of on E before it (ALBERT).
        embed_proj_bias: the embedding projection has a bias (ALBERT).
        share_layers: one set of layer params applied L times (ALBERT cross-layer sharing).
        type_vocab_size: Y token types (0: no token-type embeddings).
        position: ``learned`` (an absolute table added to the input) or ``none``.
        position_offset: added to positions before the table lookup (RoBERTa: pad_id + 1); the
            table has ``max_seq_len + position_offset`` rows.
        pad_id: the padding token id.
        norm_eps: LayerNorm epsilon.
        mlp: the MLP activation (``gelu``, ``gelu_tanh``, ``relu`` ...).
        relative_attention: DeBERTa's disentangled attention over relative positions.
        position_buckets: log buckets of relative positions (0: raw distances).
        max_relative_positions: the farthest relative distance (None: max_seq_len).
        share_att_key: the relative table uses the attention's own q/k projections.
        pos_att_type: the relative terms, a tuple of ``c2p`` and ``p2c``; they also set the logit
            scale ``1 / sqrt(H * (1 + len))``.
        rel_embed_norm: LayerNorm on the relative table (DeBERTa-v3 ``norm_rel_ebd``).
        head: ``none``, ``mlm``, ``pretraining`` (mlm + a two-way pair head: NSP or SOP),
            ``sequence_classification`` or ``token_classification``.
        num_labels: C, classes of the classification heads.
        pooler: a dense layer on the first token (``pooled`` output; used by ``pretraining``
            and ``sequence_classification``).
        pooler_activation: its activation (``tanh``; DeBERTa: ``gelu``).
        mlm_activation: the activation of the MLM head's transform (RoBERTa: always ``gelu``).
        attention_impl: ``dense``, ``blockwise`` (O(T) memory), ``cudnn``, ``splash`` or ``auto``;
            see :mod:`llmzoo.layers.attention_impl`. DeBERTa's relative attention runs ``dense``
            only.
        attention_window: Longformer's local + global attention (:mod:`llmzoo.layers.longformer`,
            memory linear in T): each token sees ``window / 2`` tokens on either side plus the
            global tokens of ``batch['global_mask']``. One even int, or one per layer; None:
            full attention (``attention_impl``).
        max_global_tokens: G, the most global tokens a row may carry (Longformer).
    """

    FAMILIES = ("bert", "roberta", "albert", "deberta_v2", "longformer")

    kind: str = "encoder"
    family: str = "bert"
    vocab_size: int = 30522
    max_seq_len: int = 512
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    embed_dim: int | None = None
    embed_norm_after_proj: bool = False
    embed_proj_bias: bool = True
    share_layers: bool = False
    type_vocab_size: int = 2
    position: str = "learned"
    position_offset: int = 0
    pad_id: int = 0
    norm_eps: float = 1e-12
    mlp: str = "gelu"
    relative_attention: bool = False
    position_buckets: int = 0
    max_relative_positions: int | None = None
    share_att_key: bool = False
    pos_att_type: tuple[str, ...] = ()
    rel_embed_norm: bool = False
    head: str = "mlm"
    num_labels: int = 2
    pooler: bool = False
    pooler_activation: str = "tanh"
    mlm_activation: str = "gelu"
    attention_impl: str = "dense"
    attention_window: int | tuple[int, ...] | None = None
    max_global_tokens: int = 64

    def __post_init__(self):
        super().__post_init__()
        self._check_window()
        for key in ("d_model", "n_layers", "n_heads", "d_ff", "num_labels"):
            check_range(f"model.{key}", getattr(self, key), lo=1)
        for key in ("type_vocab_size", "position_offset", "position_buckets"):
            check_range(f"model.{key}", getattr(self, key), lo=0)
        if self.embed_dim is not None:
            check_range("model.embed_dim", self.embed_dim, lo=1)
        if self.max_relative_positions is not None:
            check_range("model.max_relative_positions", self.max_relative_positions, lo=2)
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} does not divide model.d_model={self.d_model}; "
                "choose n_heads that divides d_model"
            )
        self._check_choices()
        rel = "DeBERTa's disentangled relative attention" if self.relative_attention else None
        attention_impl.check_attention_impl(self.attention_impl, dense_bias=rel)

    def _check_window(self):
        window = self.attention_window
        if isinstance(window, list):  # from YAML: keep the config hashable
            object.__setattr__(self, "attention_window", window := tuple(window))
        check_range("model.max_global_tokens", self.max_global_tokens, lo=1)
        if window is None:
            return
        sizes = window if isinstance(window, tuple) else (window,)
        bad = [w for w in sizes if isinstance(w, bool) or not isinstance(w, int) or w <= 0 or w % 2]
        if bad:
            fix = bad[0] + 1 if isinstance(bad[0], int) and bad[0] > 0 else 512
            raise ConfigError(
                f"model.attention_window={window!r} must be even and positive (each token sees "
                f"window/2 tokens on either side); use e.g. {fix}"
            )
        if isinstance(window, tuple) and len(window) != self.n_layers:
            raise ConfigError(
                f"model.attention_window has {len(window)} entries but model.n_layers="
                f"{self.n_layers}; give one window per layer or a single int"
            )
        if self.relative_attention:
            raise ConfigError(
                "model.attention_window (Longformer) cannot combine with "
                "model.relative_attention=true; drop one of them"
            )

    @property
    def layer_windows(self) -> tuple[int, ...] | None:
        """The Longformer window of each of the L layers; None without one."""
        w = self.attention_window
        return None if w is None else (w if isinstance(w, tuple) else (w,) * self.n_layers)

    def _check_choices(self):
        choices = {
            "position": ("learned", "none"),
            "head": HEADS,
            "mlp": tuple(ACTIVATIONS),
            "mlm_activation": tuple(ACTIVATIONS),
            "pooler_activation": POOLER_ACTIVATIONS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                value = getattr(self, key)
                raise ConfigError(
                    f"model.{key}={value!r} is unknown; use one of {', '.join(allowed)}"
                )
        bad = [t for t in self.pos_att_type if t not in disentangled.POS_ATT_TYPES]
        if bad or len(set(self.pos_att_type)) != len(self.pos_att_type):
            raise ConfigError(
                f"model.pos_att_type={self.pos_att_type!r}; use distinct entries of c2p, p2c"
            )
        if self.head in ("pretraining", "sequence_classification") and not self.pooler:
            raise ConfigError(
                f"model.head={self.head!r} reads the pooled first token; set model.pooler=true"
            )
        if self.position_buckets and self.position_buckets < 4:
            raise ConfigError(
                f"model.position_buckets={self.position_buckets}; use 0 (no buckets) or >= 4"
            )

    @property
    def position_limit(self) -> int | None:
        """``max_seq_len`` with a learned position table, else None (relative positions)."""
        return self.max_seq_len if self.position == "learned" else None

    @property
    def dim_per_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def embed_width(self) -> int:
        """E: the width of the token, position and type embeddings."""
        return self.embed_dim or self.d_model

    @property
    def relative_span(self) -> int:
        """R: the relative table has 2R rows (``position_buckets`` when bucketed)."""
        return self.position_buckets or self.max_relative_positions or self.max_seq_len
