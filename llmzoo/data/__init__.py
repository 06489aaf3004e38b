"""Data: TFDS sources (array_record; also your own .txt/.jsonl files), SentencePiece tokenizers,
Grain packing pipelines."""

from llmzoo.data.local_text import LocalText
from llmzoo.data.pipeline import make_eval_batches, make_lm_pipeline
from llmzoo.data.pydoc_corpus import PydocTopics, pydoc_documents
from llmzoo.data.sources import TextSource, build_source, iter_texts, source_for
from llmzoo.data.stats import unigram_entropy
from llmzoo.data.tokenizer import Tokenizer, train_tokenizer

__all__ = [
    "LocalText",
    "PydocTopics",
    "TextSource",
    "Tokenizer",
    "build_source",
    "iter_texts",
    "make_eval_batches",
    "make_lm_pipeline",
    "pydoc_documents",
    "source_for",
    "train_tokenizer",
    "unigram_entropy",
]
