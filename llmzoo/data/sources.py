"""Random-access sources of text documents backed by TFDS ``array_record`` files.

``pydoc_topics`` (see :mod:`llmzoo.data.pydoc_corpus`) and local ``.txt``/``.jsonl`` files (see
:mod:`llmzoo.data.local_text`) are prepared locally on first use. Any other name is a TFDS
builder, which downloads and prepares it in ``data_dir`` (this needs network access, and some
TFDS builders need TensorFlow to *prepare*; reading never does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

from llmzoo.config import DataConfig
from llmzoo.data.local_text import LocalText, is_local
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


def _tfds_records(name: str, split: str, data_dir: str):
    """A TFDS dataset's split as a data source; prepared first if it is not in ``data_dir``."""
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as e:  # noqa: BLE001 - any failure to download or prepare means the same
            raise DataError(
                f"dataset {name!r} is not prepared in data.data_dir={data_dir!r} and preparing "
                f"it failed ({_first_line(e)}). It must be downloaded: on a machine with network "
                f"access run `llmzoo data build --dataset {name} --data-dir DIR` (TFDS may need "
                "TensorFlow there), copy DIR here and set data.data_dir=DIR"
            ) from None
    return builder.as_data_source(split)


def build_source(
    name: str,
    split: str,
    *,
    data_dir: str,
    text_key: str = "text",
    txt_documents: str = "file",
    eval_fraction: float = 0.1,
) -> TextSource:
    """Returns a random-access source of the documents of one split of a dataset.

    Args:
        name: ``'pydoc_topics'`` (built offline on first use), a TFDS name such as ``'lm1b'``, or
            local text: a ``.txt``/``.jsonl`` file, a folder or a glob of them (see
            :mod:`llmzoo.data.local_text`).
        split: a TFDS split such as ``'train'``, ``'validation'`` or ``'train[:10%]'``.
        data_dir: directory holding TFDS data; the dataset lives in ``data_dir/<name>/<version>``.
        text_key: the feature holding the text of a document (the key of ``.jsonl`` records).
        txt_documents: ``'file'`` or ``'paragraph'``: what one document of a ``.txt`` file is.
        eval_fraction: the share of local documents in the ``validation`` split.

    Returns:
        A :class:`TextSource`; ``len(source)`` documents, ``source[i]`` is a str.

    Raises:
        DataError: the dataset, the split or the text field does not exist or cannot be prepared.
    """
    local = is_local(name)
    try:
        if name == PYDOC_TOPICS or local:
            if local:
                builder = LocalText(
                    name,
                    data_dir=data_dir,
                    text_key=text_key,
                    txt_documents=txt_documents,
                    eval_fraction=eval_fraction,
                )
            else:
                builder = PydocTopics(data_dir=data_dir, file_format="array_record")
            builder.download_and_prepare()  # A no-op when already prepared in data_dir.
            records = builder.as_data_source(split)
        else:
            records = _tfds_records(name, split, data_dir)
    except DataError:
        raise
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"unknown dataset {name!r}; use 'pydoc_topics', a TFDS catalog name such as 'lm1b', "
            "or your own text: a .txt or .jsonl file, a folder of them, or a glob"
        ) from None
    except (KeyError, ValueError, AssertionError) as e:
        raise DataError(f"cannot read split {split!r} of dataset {name!r}: {_first_line(e)}") from e
    # Local records always hold the text as 'text'; text_key named the .jsonl field.
    source = TextSource(records, "text" if local else text_key, name)
    if len(source):
        source[0]  # Fails early, with a DataError, when text_key is not a field.
    return source


def source_for(data: DataConfig, split: str) -> TextSource:
    """:func:`build_source` for one split of the dataset a :class:`DataConfig` names."""
    return build_source(
        data.dataset,
        split,
        data_dir=data.data_dir,
        text_key=data.text_key,
        txt_documents=data.txt_documents,
        eval_fraction=data.eval_fraction,
    )


def iter_texts(data: DataConfig, split: str, limit: int | None = None) -> Iterator[str]:
    """Returns an iterator over the documents of a split, in storage order, at most ``limit``.

    Meant for tokenizer training; fails eagerly (see :func:`build_source`).
    """
    source = source_for(data, split)
    count = len(source) if limit is None else min(limit, len(source))
    return (source[index] for index in range(count))
