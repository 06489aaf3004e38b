"""T5 (Raffel et al., 2020) and T5 v1.1 / Flan-T5 (Chung et al., 2022): encoder-decoder with RMSNorm
before each sub-layer, no biases, relative position buckets shared by the layers of a stack, no
1/sqrt(H) attention scaling. v1.0: ReLU MLP, LM head tied to the embeddings with the decoder
output scaled by D ** -0.5; v1.1: GeGLU (tanh GELU) MLP and an untied LM head.

Presets: ``t5-tiny`` (tests), ``t5-small``, ``t5-base``, ``t5-large``, ``t5-v1_1-small``,
``t5-v1_1-base``, ``t5-v1_1-large``, ``flan-t5-base``. Plain data: presets of kind ``seq2seq``.
"""

import dataclasses

from llmzoo.models.seq2seq import Seq2SeqConfig

T5 = Seq2SeqConfig(
    family="t5",
    vocab_size=32128,
    max_seq_len=512,
    d_model=512,
    n_heads=8,
    head_dim=64,
    d_ff=2048,
    n_encoder_layers=6,
    n_decoder_layers=6,
    position="relative",
    relative_buckets=32,
    relative_max_distance=128,
    norm="rmsnorm",
    norm_eps=1e-6,
    norm_position="pre",
    final_norm=True,
    mlp="relu",
    bias=False,
    tie_embeddings=True,
    decoder_output_scale=True,
    attn_scale=1.0,
    pad_id=0,
    eos_id=1,
    decoder_start_id=0,
)
T5_V1_1 = dataclasses.replace(
    T5,
    mlp="geglu",
    tie_embeddings=False,
    decoder_output_scale=False,
    n_heads=6,
    d_ff=1024,
    n_encoder_layers=8,
    n_decoder_layers=8,
)


def _layers(cfg, n, **changes):
    return dataclasses.replace(cfg, n_encoder_layers=n, n_decoder_layers=n, **changes)


PRESETS: dict[str, Seq2SeqConfig] = {
    "t5-tiny": dataclasses.replace(
        T5_V1_1,
        vocab_size=512,
        d_model=64,
        n_heads=4,
        head_dim=16,
        d_ff=128,
        max_seq_len=256,
        n_encoder_layers=2,
        n_decoder_layers=2,
    ),
    "t5-small": T5,
    "t5-base": _layers(T5, 12, d_model=768, n_heads=12, d_ff=3072),
    "t5-large": _layers(T5, 24, d_model=1024, n_heads=16, d_ff=4096),
    "t5-v1_1-small": T5_V1_1,
    "t5-v1_1-base": _layers(T5_V1_1, 12, d_model=768, n_heads=12, d_ff=2048),
    "t5-v1_1-large": _layers(T5_V1_1, 24, d_model=1024, n_heads=16, d_ff=2816),
}
PRESETS["flan-t5-base"] = PRESETS["t5-v1_1-base"]
