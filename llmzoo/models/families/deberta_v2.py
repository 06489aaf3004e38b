"""DeBERTa-v3 (He et al., 2021/2023) in the DeBERTa-v2 architecture: disentangled attention over
log-bucketed relative positions (256 buckets, shared q/k projections, c2p + p2c), a LayerNorm on
the relative table, no absolute positions and no token types.

Presets: ``deberta_v2-tiny`` (tests), ``deberta-v3-xsmall``, ``deberta-v3-small`` (142M),
``deberta-v3-base`` (184M), ``deberta-v3-large`` (435M); the counts include the 128K-token
embedding table. Plain data: presets of kind ``encoder``.
"""

import dataclasses

from llmzoo.models.encoder import EncoderConfig

DEBERTA_V3 = EncoderConfig(
    family="deberta_v2",
    vocab_size=128100,
    max_seq_len=512,
    type_vocab_size=0,
    position="none",
    norm_eps=1e-7,
    embed_norm_after_proj=True,
    embed_proj_bias=False,
    relative_attention=True,
    position_buckets=256,
    share_att_key=True,
    pos_att_type=("p2c", "c2p"),
    rel_embed_norm=True,
    pooler_activation="gelu",
    dropout=0.1,
)
PRESETS: dict[str, EncoderConfig] = {
    "deberta_v2-tiny": dataclasses.replace(
        DEBERTA_V3,
        vocab_size=512,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=256,
        max_seq_len=128,
        position_buckets=32,
    ),
}
for _name, (_d, _l, _n) in {
    "deberta-v3-xsmall": (384, 12, 6),
    "deberta-v3-small": (768, 6, 12),
    "deberta-v3-base": (768, 12, 12),
    "deberta-v3-large": (1024, 24, 16),
}.items():
    PRESETS[_name] = dataclasses.replace(
        DEBERTA_V3, d_model=_d, n_layers=_l, n_heads=_n, d_ff=4 * _d
    )
