"""Classic word embeddings: Word2Vec (skip-gram with negative sampling) and GloVe, as pure JAX
functions over dict pytrees, with the word2vec text format and cosine nearest neighbours."""

from llmzoo.wordvec.embeddings import METHODS, method_config, train_vectors
from llmzoo.wordvec.glove import GloveConfig, cooccurrence, glove_loss, train_glove, weighting
from llmzoo.wordvec.io import load_word2vec_text, neighbours, save_word2vec_text
from llmzoo.wordvec.vocab import Vocab, build_vocab, encode, tokenize
from llmzoo.wordvec.word2vec import Word2VecConfig, sgns_loss, skipgram_pairs, train_word2vec

__all__ = [
    "METHODS",
    "GloveConfig",
    "Vocab",
    "Word2VecConfig",
    "build_vocab",
    "cooccurrence",
    "encode",
    "glove_loss",
    "load_word2vec_text",
    "method_config",
    "neighbours",
    "save_word2vec_text",
    "sgns_loss",
    "skipgram_pairs",
    "tokenize",
    "train_glove",
    "train_vectors",
    "train_word2vec",
    "weighting",
]
