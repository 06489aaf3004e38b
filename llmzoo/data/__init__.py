"""Data: TFDS sources (array_record), SentencePiece tokenizers, Grain packing pipelines."""

from llmzoo.data.pipeline import make_eval_batches, make_lm_pipeline
from llmzoo.data.pydoc_corpus import PydocTopics, pydoc_documents
from llmzoo.data.sources import TextSource, build_source, iter_texts
from llmzoo.data.stats import unigram_entropy
from llmzoo.data.tokenizer import Tokenizer, train_tokenizer

__all__ = [
    "PydocTopics",
    "TextSource",
    "Tokenizer",
    "build_source",
    "iter_texts",
    "make_eval_batches",
    "make_lm_pipeline",
    "pydoc_documents",
    "train_tokenizer",
    "unigram_entropy",
]
