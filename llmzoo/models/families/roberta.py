"""RoBERTa (Liu et al., 2019): BERT's architecture with a byte-level BPE vocabulary, one token
type, and positions that start after the padding id (``position_offset = pad_id + 1``).

Presets: ``roberta-tiny`` (tests), ``roberta-base`` (125M), ``roberta-large`` (355M). Plain data:
presets of kind ``encoder``.
"""

import dataclasses

from llmzoo.models.encoder import EncoderConfig

ROBERTA = EncoderConfig(
    family="roberta",
    vocab_size=50265,
    max_seq_len=512,
    pad_id=1,
    position_offset=2,
    type_vocab_size=1,
    norm_eps=1e-5,
    dropout=0.1,
)
PRESETS: dict[str, EncoderConfig] = {
    "roberta-tiny": dataclasses.replace(
        ROBERTA, vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=128
    ),
    "roberta-base": ROBERTA,
    "roberta-large": dataclasses.replace(ROBERTA, d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
}
