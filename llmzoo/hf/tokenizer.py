"""Tokenizers that ship with Hugging Face checkpoints: ``tokenizer.json`` or ``tokenizer.model``.

Both load behind the interface of :class:`llmzoo.data.tokenizer.Tokenizer`: ``encode(str)`` (no
special tokens added unless ``add_special_tokens=True``), ``decode(ids)`` (special tokens dropped),
``vocab_size``, ``bos_id``, ``eos_id``, ``pad_id`` (-1 when the checkpoint defines none).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from llmzoo.errors import DataError

# The one list of tokenizer file names (checkpoint and run directories alike), preferred first.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def find_tokenizer_file(path: str | os.PathLike) -> str | None:
    """The tokenizer file in a checkpoint directory (``tokenizer.json`` first), or None."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    for name in TOKENIZER_FILES:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


class HFTokenizer:
    """A ``tokenizers`` tokenizer (``tokenizer.json``) with the special ids of its checkpoint."""

    def __init__(self, tokenizer, path: str, special: dict[str, int]):
        self._tok = tokenizer
        self._path = path
        self._special = special

    @classmethod
    def load(cls, path: str) -> HFTokenizer:
        """Loads ``tokenizer.json``; special ids come from the sibling ``tokenizer_config.json``,
        ``special_tokens_map.json`` or ``config.json`` (in that order)."""
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception subclasses
            raise DataError(
                f"{path!r} is not a Hugging Face tokenizer.json ({str(e).splitlines()[0]}); "
                "re-download it"
            ) from None
        # tokenizer.json may carry padding and truncation settings (MiniLM pads to 128): encode
        # exactly the text given, as the SentencePiece tokenizers do.
        tok.no_padding()
        tok.no_truncation()
        folder = os.path.dirname(path)
        # transformers' split_special_tokens: special tokens spelled in the text are plain text
        # (tokenizers exported from SentencePiece models set it, as SentencePiece does this).
        if _read_json(os.path.join(folder, "tokenizer_config.json")).get("split_special_tokens"):
            try:
                tok.encode_special_tokens = True
            except AttributeError:  # older tokenizers have no such switch
                pass
        special: dict[str, int] = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            data = _read_json(os.path.join(folder, name))
            for kind in ("bos", "eos", "pad"):
                token = data.get(f"{kind}_token")
                if isinstance(token, dict):
                    token = token.get("content")
                if isinstance(token, str) and kind not in special:
                    tid = tok.token_to_id(token)
                    if tid is not None:
                        special[kind] = tid
        model_cfg = _read_json(os.path.join(folder, "config.json"))
        for kind in ("bos", "eos", "pad"):
            tid = model_cfg.get(f"{kind}_token_id")
            if isinstance(tid, list):
                tid = tid[0] if tid else None
            if isinstance(tid, int) and kind not in special:
                special[kind] = tid
        return cls(tok, path, special)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens``, the checkpoint's post-processor adds
        its special tokens (BERT: ``[CLS] ... [SEP]``, RoBERTa: ``<s> ... </s>``)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens decode to nothing."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return self._special.get("bos", -1)

    @property
    def eos_id(self) -> int:
        return self._special.get("eos", -1)

    @property
    def pad_id(self) -> int:
        return self._special.get("pad", -1)

    @property
    def mask_id(self) -> int:
        """The id of ``[MASK]`` or ``<mask>``, or -1."""
        for token in ("[MASK]", "<mask>"):
            tid = self._tok.token_to_id(token)
            if tid is not None:
                return tid
        return -1

    def id_to_piece(self, tid: int) -> str:
        """The token string of id ``tid`` (WordPiece marks continuations with ``'##'``)."""
        return self._tok.id_to_token(int(tid)) or ""

    @property
    def path(self) -> str:
        return self._path

    def __repr__(self) -> str:
        return f"HFTokenizer({self._path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | os.PathLike):
    """Loads a tokenizer file, or the tokenizer of a checkpoint or run directory: llmzoo's one
    tokenizer loader (train, eval, generate, embed and convert all use it).

    ``tokenizer.json`` loads with the ``tokenizers`` package, ``tokenizer.model`` with
    SentencePiece (as :class:`llmzoo.data.tokenizer.Tokenizer`).

    Raises:
        DataError: neither file is there, or it cannot be parsed.
    """
    file = find_tokenizer_file(path)
    if file is None and not os.path.isdir(path):
        raise DataError(
            f"tokenizer file {os.fspath(path)!r} not found; run `llmzoo tokenizer train` to "
            "create it (or set data.train_tokenizer=true)"
        )
    if file is None:
        raise DataError(
            f"{os.fspath(path)!r} has no tokenizer.json or tokenizer.model; "
            "copy the checkpoint's tokenizer files next to config.json"
        )
    if file.endswith(".json"):
        return HFTokenizer.load(file)
    from llmzoo.data.tokenizer import Tokenizer

    return Tokenizer.load(file)
