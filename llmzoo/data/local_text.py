"""Your own text as a TFDS dataset: ``.txt`` and ``.jsonl`` files, folders and globs of them.

``data.dataset`` names local text when it ends in ``.txt`` or ``.jsonl``, contains a glob
character (``* ? [``) or is an existing folder (every ``.txt`` and ``.jsonl`` file below it).
The files are read once into an ``array_record`` TFDS dataset, ``local_text/<fingerprint>`` in
``data_dir``, and from then on read exactly like any TFDS dataset: the same Grain pipeline,
packing and resumable iterator state.

- **Documents.** A ``.txt`` file is one document, or with ``txt_documents='paragraph'`` each of
  its blocks separated by blank lines is one (without its leading and trailing newlines). Every
  line of a ``.jsonl`` file is a JSON object whose ``text_key`` field is a document.
- **Split.** Each document has the id ``<path relative to the files' common folder>:<index>``.
  It goes to ``validation`` when ``crc32(id) / 2**32 < eval_fraction``, else to ``train``; so the
  split depends only on the files, not on their order or on Python's randomised ``hash()``, and
  adding files under the same common folder moves no other document. Each split gets at least
  one document (the lowest hash goes to validation, the highest to train), so two are needed.
- **Fingerprint.** The paths, sizes and modification times of the files, and the options above.
  Editing a file therefore prepares a new dataset; older ones stay in ``data_dir/local_text``
  until you delete them.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator

import tensorflow_datasets as tfds
from etils import epath

from llmzoo.errors import DataError

SUFFIXES = (".txt", ".jsonl")
_GLOB_CHARS = re.compile(r"[*?[]")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def _not_custom_config_note(record: logging.LogRecord) -> bool:
    # Every LocalText has its own config (named by its fingerprint); TFDS warns about each one.
    return not str(record.msg).startswith("Using custom data configuration")


logging.getLogger("absl").addFilter(_not_custom_config_note)


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder of ``{'text': str}`` documents that are already on this machine."""

    HOMEPAGE = None

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS otherwise derives this from the top-level package with importlib.resources, which
        # fails for a namespace package installed in editable mode.
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly: dataset_info_from_configs() looks for metadata files in a package
        # directory, which a single-module builder does not have.
        return tfds.core.DatasetInfo(
            builder=self,
            description=inspect.getdoc(type(self)),
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            homepage=self.HOMEPAGE,
        )


def is_local(dataset: str) -> bool:
    """Whether ``data.dataset`` names local text files rather than a TFDS dataset."""
    return dataset.endswith(SUFFIXES) or bool(_GLOB_CHARS.search(dataset)) or os.path.isdir(dataset)


def local_files(dataset: str) -> list[str]:
    """Returns the sorted ``.txt``/``.jsonl`` files that ``dataset`` names.

    Raises:
        DataError: nothing matches, or a matched file is neither ``.txt`` nor ``.jsonl``.
    """
    if os.path.isdir(dataset):
        pattern = os.path.join(dataset, "**", "*")
        files = [f for f in glob.glob(pattern, recursive=True) if f.endswith(SUFFIXES)]
    else:
        files = glob.glob(dataset, recursive=True) if _GLOB_CHARS.search(dataset) else [dataset]
        files = [f for f in files if not os.path.isdir(f)]
        others = [f for f in files if not f.endswith(SUFFIXES)]
        if others:
            raise DataError(
                f"data.dataset={dataset!r} matches {others[0]!r}, which is neither .txt nor "
                ".jsonl; narrow the pattern, e.g. 'folder/*.txt'"
            )
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        raise DataError(
            f"no .txt or .jsonl files match data.dataset={dataset!r}; give a file, a folder "
            "or a glob such as 'corpus/**/*.txt' (paths are relative to the working directory)"
        )
    return files


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path!r} is not UTF-8 text (byte {e.start}); re-encode it") from None


def _jsonl_texts(path: str, text_key: str) -> Iterator[str]:
    for number, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not a JSON object ({e.msg})") from None
        if not isinstance(record, dict) or text_key not in record:
            keys = sorted(record) if isinstance(record, dict) else []
            raise DataError(
                f"{path}:{number}: no field {text_key!r}; set data.text_key to the field that "
                f"holds the text (this record has {keys})"
            )
        if not isinstance(record[text_key], str):
            kind = type(record[text_key]).__name__
            raise DataError(f"{path}:{number}: field {text_key!r} is not a string ({kind})")
        yield record[text_key]


def file_documents(path: str, *, text_key: str, txt_documents: str) -> Iterator[str]:
    """The non-empty documents of one file, in order (see the module docstring)."""
    if path.endswith(".jsonl"):
        texts = _jsonl_texts(path, text_key)
    elif txt_documents == "paragraph":
        texts = (block.strip("\r\n") for block in _BLANK_LINE.split(_read(path)))
    else:
        texts = iter([_read(path)])
    return (t for t in texts if t.strip())


def _unit_hash(doc_id: str) -> float:
    return zlib.crc32(doc_id.encode("utf-8")) / 2**32


class LocalText(OfflineBuilder, skip_registration=True):
    """Documents from local ``.txt`` and ``.jsonl`` files, split into train and validation."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "crc32 split by eval_fraction; .txt per file or paragraph."}

    def __init__(
        self,
        dataset: str,
        *,
        data_dir: str,
        text_key: str = "text",
        txt_documents: str = "file",
        eval_fraction: float = 0.1,
    ):
        self._dataset = dataset
        self._files = local_files(dataset)
        self._root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in self._files])
        self._options = {"text_key": text_key, "txt_documents": txt_documents}
        self._eval_fraction = eval_fraction
        config = tfds.core.BuilderConfig(name=self._fingerprint(), version=self.VERSION)
        self.BUILDER_CONFIGS = [config]
        super().__init__(data_dir=data_dir, config=config, file_format="array_record")

    def _fingerprint(self) -> str:
        stats = []
        for path in self._files:
            st = os.stat(path)
            stats.append((os.path.abspath(path), st.st_size, st.st_mtime_ns))
        key = json.dumps([stats, self._options, self._eval_fraction], sort_keys=True)
        return "h" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]

    def _documents(self) -> Iterator[tuple[str, str]]:
        """(id, text) of every document of every file, in file order."""
        for path in self._files:
            rel = os.path.relpath(os.path.abspath(path), self._root)
            for index, text in enumerate(file_documents(path, **self._options)):
                yield f"{rel}:{index}", text

    def _validation_ids(self) -> set[str]:
        hashes = {doc_id: _unit_hash(doc_id) for doc_id, _ in self._documents()}
        if len(hashes) < 2:
            raise DataError(
                f"{self._dataset!r} holds {len(hashes)} document(s); training needs at least 2, "
                "one of them for validation: add text, or set data.txt_documents=paragraph to "
                "make each blank-line separated block a document"
            )
        chosen = {i for i, h in hashes.items() if h < self._eval_fraction}
        chosen.add(min(hashes, key=hashes.get))
        chosen.discard(max(hashes, key=hashes.get))
        return chosen

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download.
        validation = self._validation_ids()
        return {
            "train": self._generate_examples(validation, False),
            "validation": self._generate_examples(validation, True),
        }

    def _generate_examples(self, validation: set[str], held_out: bool):
        for doc_id, text in self._documents():
            if (doc_id in validation) == held_out:
                yield doc_id, {"text": text}
