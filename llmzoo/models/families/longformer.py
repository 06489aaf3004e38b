"""Longformer (Beltagy et al., 2020): RoBERTa with local + global attention, so that memory
grows linearly with length: each token sees ``attention_window / 2`` tokens on either side plus
the global tokens of ``batch['global_mask']``, which see everything.

Presets: ``longformer-tiny`` (tests), ``longformer-base-4096`` (149M). Plain data: presets of
kind ``encoder``.
"""

import dataclasses

from llmzoo.models.encoder import EncoderConfig

LONGFORMER = EncoderConfig(
    family="longformer",
    vocab_size=50265,
    max_seq_len=4096,
    pad_id=1,
    position_offset=2,
    type_vocab_size=1,
    norm_eps=1e-5,
    dropout=0.1,
    attention_window=512,
)
PRESETS: dict[str, EncoderConfig] = {
    "longformer-tiny": dataclasses.replace(
        LONGFORMER,
        vocab_size=512,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=256,
        max_seq_len=256,
        attention_window=16,
    ),
    "longformer-base-4096": LONGFORMER,
}
