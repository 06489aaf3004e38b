"""SentencePiece tokenizer training and loading, with exact, lossless round trips.

Training settings make ``decode(encode(s)) == s`` for any text: no normalization
(``normalization_rule_name='identity'``), no dummy prefix space, whitespace kept as is
(``remove_extra_whitespaces=False``; runs of spaces may become single pieces), and
``byte_fallback=True`` so characters outside the vocabulary (emoji, rare CJK, control
characters) become UTF-8 byte pieces instead of ``<unk>``. Newlines and tabs are ordinary
characters that the trainer sees and may merge (e.g. ``'):\\n'``).

One exception to exactness: SentencePiece uses U+2581 (``'▁'``) as its meta-symbol for space, so
a literal ``'▁'`` in the input decodes to ``' '``.

Reserved ids: ``pad=0``, ``unk=1``, ``bos=2``, ``eos=3``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator

import sentencepiece as spm

from llmzoo.errors import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MAX_SENTENCE_CHARS = 16384


class Tokenizer:
    """A loaded SentencePiece model. Picklable (the model travels as its serialized proto)."""

    def __init__(self, processor: spm.SentencePieceProcessor, path: str):
        self._sp = processor
        self._path = path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Loads any SentencePiece ``.model`` file.

        Raises:
            DataError: the file is missing or is not a SentencePiece model.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise DataError(
                f"tokenizer file {path!r} not found; run `llmzoo tokenizer train` to create it"
            )
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(model_file=path)
        except (OSError, RuntimeError) as e:
            raise DataError(
                f"tokenizer file {path!r} is not a SentencePiece model ({e}); "
                "retrain it with `llmzoo tokenizer train`"
            ) from None
        return cls(processor, path)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Returns the token ids of ``text``; with ``add_special_tokens``, bos and eos around them
        (each only if the model defines it)."""
        ids = self._sp.EncodeAsIds(text)
        if not add_special_tokens:
            return ids
        bos = [self.bos_id] if self.bos_id >= 0 else []
        eos = [self.eos_id] if self.eos_id >= 0 else []
        return bos + ids + eos

    def decode(self, ids: Iterable[int]) -> str:
        """Returns the text of ``ids``; pad/bos/eos (control) ids decode to nothing."""
        return self._sp.DecodeIds([int(i) for i in ids])

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    @property
    def pad_id(self) -> int:
        """Padding id; -1 if the model defines none (models trained here use 0)."""
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def mask_id(self) -> int:
        """The ``<mask>`` piece's id, or -1 (tokenizers trained here have none: masked-LM
        training then uses the first id past the vocabulary)."""
        tid = self._sp.PieceToId("<mask>")
        return -1 if tid == self._sp.unk_id() else tid

    def id_to_piece(self, tid: int) -> str:
        """The piece string of id ``tid`` (``'▁'`` marks a leading space)."""
        return self._sp.IdToPiece(int(tid))

    @property
    def path(self) -> str:
        return self._path

    def __getstate__(self) -> dict:
        return {"proto": self._sp.serialized_model_proto(), "path": self._path}

    def __setstate__(self, state: dict) -> None:
        self._sp = spm.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(state["proto"])
        self._path = state["path"]

    def __repr__(self) -> str:
        return f"Tokenizer({self._path!r}, vocab_size={self.vocab_size})"


def _sentences(texts: Iterable[str], max_chars: int = MAX_SENTENCE_CHARS) -> Iterator[str]:
    """Yields each text whole, or cut at line ends into pieces of at most ~max_chars."""
    for text in texts:
        if len(text) <= max_chars:
            if text:
                yield text
            continue
        piece = ""
        for line in text.splitlines(keepends=True):
            if piece and len(piece) + len(line) > max_chars:
                yield piece
                piece = ""
            piece += line
            while len(piece) > max_chars:  # A single very long line.
                yield piece[:max_chars]
                piece = piece[max_chars:]
        if piece:
            yield piece


def train_tokenizer(
    texts: Iterable[str],
    model_prefix: str | os.PathLike,
    *,
    vocab_size: int,
    model_type: str = "bpe",
    seed: int = 0,
) -> Tokenizer:
    """Trains a byte-fallback SentencePiece model and writes ``<model_prefix>.model``/``.vocab``.

    Training is single-threaded and seeded, so the same texts give the same model file.

    Args:
        texts: training documents; long documents are cut at line ends into pieces of at most
            ``MAX_SENTENCE_CHARS`` characters.
        model_prefix: output path without extension; parent directories are created.
        vocab_size: total number of pieces, including the 4 special and 256 byte pieces.
        model_type: ``'bpe'`` or ``'unigram'``.
        seed: seed of SentencePiece's random generator.

    Returns:
        The trained :class:`Tokenizer`.

    Raises:
        DataError: bad ``model_type``, or a ``vocab_size`` the corpus cannot support.
    """
    if model_type not in ("bpe", "unigram"):
        raise DataError(f"tokenizer model_type {model_type!r} is not supported; use bpe or unigram")
    model_prefix = os.fspath(model_prefix)
    os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=_sentences(texts),
            model_prefix=model_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=4 * MAX_SENTENCE_CHARS,  # In bytes; UTF-8 is <= 4 bytes/char.
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:
        # Keep SentencePiece's own sentence, dropping its "INTERNAL: file.cc(744) [check] " prefix.
        message = re.sub(r"^.*\] ", "", " ".join(str(e).split())).rstrip(".") or "no details"
        raise DataError(
            f"tokenizer training failed with vocab_size={vocab_size} ({message}); "
            "lower vocab_size or give more text"
        ) from None
    return Tokenizer.load(model_prefix + ".model")
