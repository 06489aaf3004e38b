"""BART (Lewis et al., 2020): encoder-decoder with LayerNorm after each sub-layer (post-norm), a
LayerNorm on the embeddings, learned positions offset by 2, biases everywhere, exact GELU, a tied LM
head plus a logits bias; decoding starts from the eos id 2.

Presets: ``bart-tiny`` (tests), ``bart-base`` (140M), ``bart-large`` (406M). Plain data: presets
of kind ``seq2seq``.
"""

import dataclasses

from llmzoo.models.seq2seq import Seq2SeqConfig

BART = Seq2SeqConfig(
    family="bart",
    vocab_size=50265,
    max_seq_len=1024,
    d_model=768,
    n_heads=12,
    d_ff=3072,
    n_encoder_layers=6,
    n_decoder_layers=6,
    position="learned",
    position_offset=2,
    norm="layernorm",
    norm_eps=1e-5,
    norm_position="post",
    embed_norm=True,
    final_norm=False,
    mlp="gelu",
    bias=True,
    tie_embeddings=True,
    decoder_output_scale=False,
    final_logits_bias=True,
    attn_scale=None,
    pad_id=1,
    eos_id=2,
    decoder_start_id=2,
)
PRESETS: dict[str, Seq2SeqConfig] = {
    "bart-tiny": dataclasses.replace(
        BART,
        vocab_size=512,
        d_model=64,
        n_heads=4,
        d_ff=128,
        max_seq_len=256,
        n_encoder_layers=2,
        n_decoder_layers=2,
    ),
    "bart-base": BART,
    "bart-large": dataclasses.replace(
        BART, d_model=1024, n_heads=16, d_ff=4096, n_encoder_layers=12, n_decoder_layers=12
    ),
}
