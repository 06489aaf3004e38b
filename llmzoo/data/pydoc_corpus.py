"""A tiny, offline text corpus: the help topics shipped with Python (``pydoc_data.topics``).

The 79 topics (about 465K characters of reStructuredText-like prose and code) are cut into
paragraph groups of about ``TARGET_CHARS`` characters, giving ~250 documents. Each document gets a
stable id ``"<topic>/<chunk index>"``; the ~10% whose ``crc32(id) % 10 == 0`` form the validation
split. The split depends only on the text shipped with the interpreter, never on Python's
randomised ``hash()``.

The builder writes ``array_record`` files and is read back with ``builder.as_data_source(split)``
or ``tfds.data_source('pydoc_topics', ...)``; neither step needs TensorFlow.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from pydoc_data.topics import topics as _TOPICS

import tensorflow_datasets as tfds

from llmzoo.data.local_text import OfflineBuilder

TARGET_CHARS = 2000
VALIDATION_BUCKETS = 1  # Out of 10 crc32 buckets.


def pydoc_documents(target_chars: int = TARGET_CHARS) -> dict[str, str]:
    """Cuts every pydoc topic into paragraph groups.

    Paragraphs (separated by a blank line) are appended to the current chunk until it holds at
    least ``target_chars`` characters. The chunks of a topic concatenate back to the topic exactly.

    Args:
        target_chars: minimum size of a chunk (the last chunk of a topic may be shorter).

    Returns:
        Mapping from document id ``"<topic>/<index:03d>"`` to its text, in sorted topic order.
    """
    docs = {}
    for topic in sorted(_TOPICS):
        # Zero-width split after each blank line keeps the separators inside the parts.
        parts = re.split(r"(?<=\n\n)", _TOPICS[topic])
        chunk, index = "", 0
        for part in parts:
            chunk += part
            if len(chunk) >= target_chars:
                docs[f"{topic}/{index:03d}"] = chunk
                chunk, index = "", index + 1
        if chunk:
            docs[f"{topic}/{index:03d}"] = chunk
    return docs


def split_of(doc_id: str) -> str:
    """Returns ``'validation'`` or ``'train'`` for a document id, by a stable crc32 hash."""
    return "validation" if zlib.crc32(doc_id.encode("utf-8")) % 10 < VALIDATION_BUCKETS else "train"


class PydocTopics(OfflineBuilder):
    """TFDS builder ``pydoc_topics``: Python's bundled help topics as language-model documents."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Paragraph groups of >= 2000 chars; crc32 90/10 split."}
    HOMEPAGE = "https://docs.python.org/3/library/pydoc.html"

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download: the text ships with the interpreter.
        return {split: self._generate_examples(split) for split in ("train", "validation")}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, str]]]:
        for doc_id, text in pydoc_documents().items():
            if split_of(doc_id) == split:
                yield doc_id, {"text": text}
