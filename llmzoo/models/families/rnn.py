"""Recurrent language models (kind ``rnn``): LSTM and GRU stacks with an embedding and LM head.

Presets ``lstm-tiny`` and ``gru-tiny`` (test-sized: V=512, D=64, L=2), and ``lstm-medium`` and
``lstm-large``, the two-layer untied LSTMs of Zaremba et al. (2014) on the Penn Treebank (V=10000;
D=650 with dropout 0.5, D=1500 with dropout 0.65). Plain data: presets of kind ``rnn``.
"""

import dataclasses

from llmzoo.models.rnn import RnnConfig

LSTM_TINY = RnnConfig(cell="lstm", vocab_size=512, d_model=64, n_layers=2, max_seq_len=256)
PRESETS: dict[str, RnnConfig] = {
    "lstm-tiny": LSTM_TINY,
    "gru-tiny": dataclasses.replace(LSTM_TINY, cell="gru"),
    "lstm-medium": RnnConfig(
        vocab_size=10000, d_model=650, n_layers=2, dropout=0.5, tie_embeddings=False
    ),
    "lstm-large": RnnConfig(
        vocab_size=10000, d_model=1500, n_layers=2, dropout=0.65, tie_embeddings=False
    ),
}
