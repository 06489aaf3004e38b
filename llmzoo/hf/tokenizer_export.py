"""A SentencePiece ``tokenizer.model`` as Hugging Face fast-tokenizer files (``tokenizer.json``).

``llmzoo convert --to-hf`` writes, next to the weights, ``tokenizer.json`` (a ``tokenizers``
pipeline built from the SentencePiece model), ``tokenizer_config.json``,
``special_tokens_map.json`` and the SentencePiece file itself as ``tokenizer.model``.
``AutoTokenizer.from_pretrained`` then loads a ``PreTrainedTokenizerFast`` that encodes and decodes
like :class:`llmzoo.data.tokenizer.Tokenizer`:

* normalizer: the model's own normalizer spec; for llmzoo's models (identity rule, no dummy
  prefix, spaces kept) only ``' '`` -> ``'▁'``. No pre-tokenizer: SentencePiece segments the whole
  text at once.
* BPE: every split of a normal piece into two normal pieces is a merge, ranked by the piece's
  score (SentencePiece merges the best-scoring pair first). Ties between different pairs that make
  the same piece are resolved by position in SentencePiece and by rank here; no such case was
  found in tests, but it is not excluded in principle.
* unigram: the pieces and scores as they are. SentencePiece's Viterbi search sums scores in
  float32, ``tokenizers`` in float64: segmentations of exactly equal score (the same pieces in
  another order, e.g. ``'▁▁▁▁▁▁' + '▁'`` against ``'▁' + '▁▁▁▁▁▁'`` in runs of spaces) are chosen by
  float32 rounding in SentencePiece and by position here, so the ids can differ there (never the
  decoded text). Control, unknown and byte pieces get a score too low to ever be chosen for the
  text they spell (SentencePiece never matches them in text).
* byte fallback and decoding: ``'▁'`` -> ``' '``, byte pieces -> UTF-8. A run of byte ids that is
  not valid UTF-8 decodes to one ``'\\ufffd'`` per byte of the run in ``tokenizers``, while
  SentencePiece keeps the valid characters of the run; ``encode`` never produces such runs.
* special tokens: control pieces (pad, bos, eos) and the unknown piece are special tokens that
  ``skip_special_tokens`` drops; their text in the input (``'<s>'``) is plain text, as in
  SentencePiece (``split_special_tokens``).
* ``add_special_tokens=True`` (transformers' default) adds what llmzoo feeds a model of that kind:
  nothing for decoders (documents are trained and prompted without bos), ``ids + [eos]`` for
  seq2seq encoders, ``[bos] + ids + [eos]`` for encoders (as ``llmzoo embed``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct

from llmzoo.errors import DataError

# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2
# (add bos, add eos) for add_special_tokens=True, per model kind.
SPECIAL_TOKENS_BY_KIND = {
    "decoder": (False, False),
    "seq2seq": (False, True),
    "encoder": (True, True),
}
SPECIAL_NAMES = ("bos", "eos", "unk", "pad")


@dataclasses.dataclass(frozen=True)
class SentencePieceModel:
    """What a SentencePiece ``.model`` file says about encoding and decoding."""

    pieces: tuple[tuple[str, float, int], ...]  # (piece, score, type) by id
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    denormalizer_charsmap: bytes = b""

    def special_tokens(self) -> dict[str, tuple[str, int]]:
        """``{'bos': (piece, id), ...}`` for the special ids the model defines."""
        out = {}
        for name in SPECIAL_NAMES:
            tid = getattr(self, f"{name}_id")
            if 0 <= tid < len(self.pieces):
                out[name] = (self.pieces[tid][0], tid)
        return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes):
    """Yields ``(field number, value)`` of a serialized protobuf message: ints for varints, bytes
    otherwise."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated protobuf message")
        yield number, value


def _int32(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def read_sentencepiece(path: str | os.PathLike) -> SentencePieceModel:
    """Reads a SentencePiece ``.model`` file (a ``ModelProto``) without protobuf.

    Raises:
        DataError: the file cannot be read or is not a SentencePiece model.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        pieces, trainer, norm, denorm = [], {}, {}, {}
        for number, value in _fields(data):
            if number == 1:
                piece = {1: b"", 2: b"\0\0\0\0", 3: NORMAL, **dict(_fields(value))}
                score = struct.unpack("<f", piece[2])[0]
                pieces.append((piece[1].decode("utf-8"), score, piece[3]))
            elif number in (2, 3, 5):
                {2: trainer, 3: norm, 5: denorm}[number].update(_fields(value))
    except (OSError, ValueError, IndexError, KeyError, UnicodeDecodeError, struct.error) as e:
        raise DataError(f"{path!r} is not a readable SentencePiece model ({e})") from None
    if not pieces:
        raise DataError(f"{path!r} is not a SentencePiece model (it has no pieces)")
    return SentencePieceModel(
        pieces=tuple(pieces),
        model_type=trainer.get(3, UNIGRAM),
        byte_fallback=bool(trainer.get(35, False)),
        treat_whitespace_as_suffix=bool(trainer.get(24, False)),
        unk_id=_int32(trainer.get(40, 0)),
        bos_id=_int32(trainer.get(41, 1)),
        eos_id=_int32(trainer.get(42, 2)),
        pad_id=_int32(trainer.get(43, -1)),
        normalizer_name=norm.get(1, b"").decode("utf-8"),
        precompiled_charsmap=norm.get(2, b""),
        add_dummy_prefix=bool(norm.get(3, True)),
        remove_extra_whitespaces=bool(norm.get(4, True)),
        escape_whitespaces=bool(norm.get(5, True)),
        denormalizer_charsmap=denorm.get(2, b""),
    )


def _check_supported(sp: SentencePieceModel, where: str) -> None:
    problems = []
    if sp.model_type not in (UNIGRAM, BPE):
        problems.append(f"model_type {sp.model_type} (only unigram and bpe convert)")
    types = {t for _, _, t in sp.pieces}
    if USER_DEFINED in types or UNUSED in types:
        problems.append("user-defined or unused pieces")
    if sp.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix")
    if sp.denormalizer_charsmap:
        problems.append("a denormalizer")
    if not 0 <= sp.unk_id < len(sp.pieces):
        problems.append(f"unk_id {sp.unk_id} outside the vocabulary")
    if problems:
        raise DataError(
            f"{where} uses {', '.join(problems)}, which tokenizer.json cannot reproduce; "
            "use the copied tokenizer.model with sentencepiece"
        )


def _bpe_model(sp: SentencePieceModel):
    from tokenizers import models

    normal = {p: (score, i) for i, (p, score, t) in enumerate(sp.pieces) if t == NORMAL}
    ranked = []
    for piece, (score, tid) in normal.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                ranked.append((-score, tid, k, left, right))
    return models.BPE(
        vocab={p: i for i, (p, _, _) in enumerate(sp.pieces)},
        merges=[(left, right) for *_, left, right in sorted(ranked)],
        unk_token=sp.pieces[sp.unk_id][0],
        fuse_unk=True,
        byte_fallback=sp.byte_fallback,
    )


def _unigram_model(sp: SentencePieceModel):
    from tokenizers import models

    normal = [score for _, score, t in sp.pieces if t == NORMAL]
    # SentencePiece matches only normal pieces in text; tokenizers matches every piece. A score
    # below any path of single-character pieces spelling a control, unknown or byte piece ('<s>',
    # '<0x41>') keeps those out of the best path when their characters are in the vocabulary. It
    # also lowers the unknown-character score, which every path through such a character pays.
    longest = max((len(p) for p, _, t in sp.pieces if t != NORMAL), default=1)
    low = longest * min(min(normal, default=0.0), 0.0) - 10.0
    vocab = [(p, score if t == NORMAL else low) for p, score, t in sp.pieces]
    return models.Unigram(vocab, unk_id=sp.unk_id, byte_fallback=sp.byte_fallback)


def sentencepiece_to_tokenizer(
    sp: SentencePieceModel, *, add_bos: bool = False, add_eos: bool = False, where: str = "model"
):
    """A ``tokenizers.Tokenizer`` that encodes and decodes like the SentencePiece model ``sp``.

    Args:
        sp: the model, from :func:`read_sentencepiece`.
        add_bos, add_eos: what ``add_special_tokens=True`` adds around the ids.
        where: the model's name in errors.

    Raises:
        DataError: the model uses a feature ``tokenizers`` cannot reproduce (user-defined or
            unused pieces, word or char models, whitespace as suffix, a denormalizer).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, processors

    _check_supported(sp, where)
    tok = Tokenizer(_bpe_model(sp) if sp.model_type == BPE else _unigram_model(sp))
    steps = []
    if sp.precompiled_charsmap:
        steps.append(normalizers.Precompiled(sp.precompiled_charsmap))
    if sp.remove_extra_whitespaces:  # SentencePiece counts only ' ' as whitespace here.
        steps += [
            normalizers.Replace(Regex(r"\A +| +\z"), ""),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    if sp.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    if sp.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)

    steps = [decoders.Replace("▁", " ")]
    if sp.byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if sp.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)

    tok.add_special_tokens(
        [
            AddedToken(p, special=True, normalized=False)
            for p, _, t in sp.pieces
            if t in (CONTROL, UNKNOWN)
        ]
    )
    special = sp.special_tokens()
    add_bos, add_eos = add_bos and "bos" in special, add_eos and "eos" in special
    if add_bos or add_eos:
        bos, eos = special.get("bos"), special.get("eos")
        single = " ".join([f"{bos[0]}:0"] * add_bos + ["$A:0"] + [f"{eos[0]}:0"] * add_eos)
        pair = " ".join([single] + [f"{bos[0]}:1"] * add_bos + ["$B:1"] + [f"{eos[0]}:1"] * add_eos)
        used = [token for token, flag in ((bos, add_bos), (eos, add_eos)) if flag]
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=used
        )
    return tok


def export_sentencepiece(
    model_path: str | os.PathLike,
    hf_dir: str | os.PathLike,
    *,
    kind: str = "decoder",
    max_length: int | None = None,
) -> list[str]:
    """Writes the Hugging Face tokenizer files of a SentencePiece model into ``hf_dir``.

    ``tokenizer.model`` (the model itself) is always written; ``tokenizer.json``,
    ``tokenizer_config.json`` and ``special_tokens_map.json`` when
    :func:`sentencepiece_to_tokenizer` supports the model (always for models that
    ``llmzoo tokenizer train`` makes).

    Args:
        model_path: the SentencePiece ``.model`` file.
        hf_dir: the Hugging Face checkpoint directory (created).
        kind: the model kind (``decoder``, ``seq2seq``, ``encoder``): what ``add_special_tokens``
            adds (see the module docstring).
        max_length: ``model_max_length`` for transformers (the model's ``max_seq_len``).

    Returns:
        The paths written.

    Raises:
        DataError: the file is not a SentencePiece model, or the model cannot be reproduced by
            ``tokenizers`` (``tokenizer.model`` is written all the same).
    """
    hf_dir = os.fspath(hf_dir)
    os.makedirs(hf_dir, exist_ok=True)
    sp = read_sentencepiece(model_path)
    model_dest = os.path.join(hf_dir, "tokenizer.model")
    shutil.copyfile(model_path, model_dest)
    add_bos, add_eos = SPECIAL_TOKENS_BY_KIND.get(kind, (False, False))
    tok = sentencepiece_to_tokenizer(
        sp, add_bos=add_bos, add_eos=add_eos, where=f"tokenizer {os.fspath(model_path)!r}"
    )
    special = {f"{name}_token": piece for name, (piece, _) in sp.special_tokens().items()}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": add_bos and "bos_token" in special,
        "add_eos_token": add_eos and "eos_token" in special,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }
    if max_length:
        config["model_max_length"] = int(max_length)
    paths = [model_dest]
    for name, content in (
        ("tokenizer.json", tok.to_str(pretty=True)),
        ("tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False)),
        ("special_tokens_map.json", json.dumps(special, indent=2, ensure_ascii=False)),
    ):
        paths.append(os.path.join(hf_dir, name))
        with open(paths[-1], "w", encoding="utf-8") as f:
            f.write(content + "\n")
    return paths
