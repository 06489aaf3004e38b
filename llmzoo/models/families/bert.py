"""BERT (Devlin et al., 2019): learned positions, token types, post-LN blocks, exact GELU, an MLM
head tied to the word embeddings.

Presets: ``bert-tiny`` (tests), ``bert-base-uncased`` (110M), ``bert-base-cased``,
``bert-large-uncased`` (336M) and ``all-minilm-l6-v2`` (the sentence-transformers embedder: no
head, a pooler). Plain data: presets of kind ``encoder``.
"""

import dataclasses

from llmzoo.models.encoder import EncoderConfig

BERT = EncoderConfig(family="bert", vocab_size=30522, max_seq_len=512, dropout=0.1)
PRESETS: dict[str, EncoderConfig] = {
    "bert-tiny": dataclasses.replace(
        BERT, vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=128
    ),
    "bert-base-uncased": BERT,
    "bert-base-cased": dataclasses.replace(BERT, vocab_size=28996),
    "bert-large-uncased": dataclasses.replace(
        BERT, d_model=1024, n_layers=24, n_heads=16, d_ff=4096
    ),
    "all-minilm-l6-v2": dataclasses.replace(
        BERT, d_model=384, n_layers=6, n_heads=12, d_ff=1536, head="none", pooler=True
    ),
}
