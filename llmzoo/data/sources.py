"""Random-access sources of text documents backed by TFDS ``array_record`` files.

``pydoc_topics`` (see :mod:`llmzoo.data.pydoc_corpus`) is built locally on first use. Any other
name is handed to ``tfds.data_source``, which downloads and prepares it in ``data_dir`` (this
needs network access, and some TFDS builders need TensorFlow to *prepare*; reading never does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

from llmzoo.data.pydoc_corpus import PydocTopics
from llmzoo.errors import DataError

PYDOC_TOPICS = "pydoc_topics"


class TextSource(Sequence[str]):
    """Wraps a TFDS data source so that ``source[i]`` is the ``text_key`` field as a str.

    Picklable (for Grain worker processes) as long as the wrapped data source is.
    """

    def __init__(self, records, text_key: str, name: str):
        self._records = records
        self._text_key = text_key
        self._name = name

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            # Sequence iteration stops on IndexError; array_record would raise ValueError.
            raise IndexError(f"index {index} out of range for {self!r}")
        record = self._records[index % len(self)]
        if self._text_key not in record:
            raise DataError(
                f"dataset {self._name!r} has no field {self._text_key!r}; "
                f"set text_key to one of {sorted(record)}"
            )
        value = record[self._text_key]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def __iter__(self) -> Iterator[str]:
        return (self[index] for index in range(len(self)))

    def __repr__(self) -> str:
        return f"TextSource({self._name!r}, text_key={self._text_key!r}, len={len(self)})"


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def build_source(name: str, split: str, *, data_dir: str, text_key: str = "text") -> TextSource:
    """Returns a random-access source of the documents of one split of a TFDS dataset.

    Args:
        name: ``'pydoc_topics'`` (built offline on first use) or any TFDS name, e.g. ``'lm1b'``.
        split: a TFDS split such as ``'train'``, ``'validation'`` or ``'train[:10%]'``.
        data_dir: directory holding TFDS data; the dataset lives in ``data_dir/<name>/<version>``.
        text_key: the feature holding the text of a document.

    Returns:
        A :class:`TextSource`; ``len(source)`` documents, ``source[i]`` is a str.

    Raises:
        DataError: the dataset, the split or the text field does not exist or cannot be prepared.
    """
    try:
        if name == PYDOC_TOPICS:
            builder = PydocTopics(data_dir=data_dir, file_format="array_record")
            builder.download_and_prepare()  # A no-op when already prepared in data_dir.
            records = builder.as_data_source(split)
        else:
            records = tfds.data_source(
                name,
                split=split,
                data_dir=data_dir,
                builder_kwargs={"file_format": "array_record"},
            )
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"unknown dataset {name!r}; use 'pydoc_topics' or a TFDS catalog name such as 'lm1b'"
        ) from None
    except ModuleNotFoundError as e:
        raise DataError(
            f"preparing dataset {name!r} needs {e.name!r}; install it, or prepare the dataset in "
            f"{data_dir!r} elsewhere with file_format='array_record'"
        ) from None
    except (KeyError, ValueError, AssertionError) as e:
        raise DataError(f"cannot read split {split!r} of dataset {name!r}: {_first_line(e)}") from e
    source = TextSource(records, text_key, name)
    if len(source):
        source[0]  # Fails early, with a DataError, when text_key is not a field.
    return source


def iter_texts(
    name: str,
    split: str,
    data_dir: str,
    text_key: str = "text",
    limit: int | None = None,
) -> Iterator[str]:
    """Returns an iterator over the documents of a split, in storage order, at most ``limit``.

    Meant for tokenizer training; see :func:`build_source` for the arguments.
    """
    source = build_source(name, split, data_dir=data_dir, text_key=text_key)  # Fails eagerly.
    count = len(source) if limit is None else min(limit, len(source))
    return (source[index] for index in range(count))
