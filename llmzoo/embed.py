"""Sentence embeddings from an encoder run: tokenize, encode, pool, normalise.

The recipe of sentence-transformers (Reimers and Gurevych, 2019) for checkpoints such as
all-MiniLM-L6-v2: each text is tokenized with the special tokens its checkpoint expects, the
encoder's final states are mean-pooled over the real tokens (or the first token is taken), and the
result is L2-normalised, so that a dot product is a cosine similarity.

Dimensions: N texts, M texts, B batch rows, T tokens, D model width.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from llmzoo import run_dir as ckpt
from llmzoo.errors import ConfigError, DataError
from llmzoo.models import registry

POOLINGS = ("mean", "cls")
EMBED_KINDS = ("encoder",)
MIN_LENGTH_BUCKET = 16  # the shortest padded length; longer ones are powers of two


def check_embed_kind(kind: str, where: str) -> None:
    """Raises unless model kind ``kind`` (of run or model ``where``) can embed text.

    Raises:
        ConfigError: ``kind`` is not an encoder kind.
    """
    if kind not in EMBED_KINDS:
        raise ConfigError(
            f"{where} has model.kind={kind!r}, which `llmzoo embed` cannot pool into sentence "
            "embeddings; use an encoder run (e.g. `llmzoo convert --from-hf` a BERT/MiniLM "
            "checkpoint), or `llmzoo generate` for decoder and seq2seq runs"
        )


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _truncate(tokenizer, text: str, ids: list[int], max_len: int) -> list[int]:
    """Cuts the text's own tokens so that ``ids`` (with special tokens) fit ``max_len``, keeping
    the special tokens, as transformers' truncation does."""
    if len(ids) <= max_len:
        return ids
    content = tokenizer.encode(text)
    n_special = len(ids) - len(content)
    if n_special >= max_len:
        raise DataError(
            f"max_len={max_len} leaves no room for text beside the {n_special} special tokens; "
            "raise max_len"
        )
    n = len(content)
    start = next((k for k in range(n_special + 1) if ids[k : k + n] == content), None)
    if start is None:  # the post-processor changed the text's tokens: cut at the end
        return ids[:max_len]
    return ids[:start] + content[: max_len - n_special] + ids[start + n :]


def tokenize(tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids of each text with its tokenizer's special tokens, truncated to ``max_len``.

    Hugging Face ``tokenizer.json`` files add what their post-processor adds (BERT and MiniLM:
    ``[CLS] ... [SEP]``; RoBERTa: ``<s> ... </s>``); SentencePiece tokenizers add bos and eos if
    they define them. Truncation drops the text's last tokens and keeps the special ones.

    Raises:
        DataError: a text has no tokens at all.
    """
    rows = []
    for i, text in enumerate(texts):
        ids = _truncate(tokenizer, text, tokenizer.encode(text, add_special_tokens=True), max_len)
        if not ids:
            raise DataError(f"text {i} ({text!r}) has no tokens; remove it or give some text")
        rows.append(ids)
    return rows


@functools.partial(jax.jit, static_argnames="cfg")
def _pooled(params, tokens, segment_ids, *, cfg):
    """Both poolings of one padded batch: ``tokens [B, T]`` -> ``{'mean', 'cls'}`` each [B, D]."""
    kind = registry.get(cfg.kind)
    hidden = kind.apply(params, {"tokens": tokens, "segment_ids": segment_ids}, cfg=cfg)["hidden"]
    return {"mean": kind.mean_pool(hidden, segment_ids), "cls": kind.cls_pool(hidden)}


def _batches(rows: list[list[int]], batch_size: int, max_len: int, pad_id: int):
    """Yields ``(indices, tokens [B, T], segment_ids [B, T])`` of texts sorted by length.

    B is ``batch_size`` or, for the last batch, the next power of two (at most ``batch_size``); T
    is a power of two (at least ``MIN_LENGTH_BUCKET``, at most ``max_len``), so that ``jit``
    compiles a few shapes only.
    """
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        b = min(batch_size, _pow2_at_least(len(index)))
        longest = max(len(rows[i]) for i in index)
        t = min(max_len, max(MIN_LENGTH_BUCKET, _pow2_at_least(longest)))
        tokens = np.full((b, t), pad_id, np.int32)
        segment_ids = np.zeros((b, t), np.int32)
        for r, i in enumerate(index):
            tokens[r, : len(rows[i])] = rows[i]
            segment_ids[r, : len(rows[i])] = 1
        yield index, tokens, segment_ids


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x [N, D]`` scaled to unit length (a zero row stays zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def embed_texts(
    params,
    cfg,
    tokenizer,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    normalize: bool = True,
    batch_size: int = 32,
    max_len: int | None = None,
) -> np.ndarray:
    """Sentence embeddings of ``texts`` from an encoder.

    Each text is tokenized with its checkpoint's special tokens (see :func:`tokenize`) and
    truncated to ``max_len`` tokens (specials included; default ``cfg.max_seq_len``, the model's
    limit: sentence-transformers' all-MiniLM-L6-v2 truncates at 256, so pass ``max_len=256`` to
    match it on longer texts). Texts run in right-padded batches whose padding has segment id 0,
    which the encoder never attends to.

    Args:
        params: the encoder's params.
        cfg: its model config (kind ``encoder``).
        tokenizer: from :func:`llmzoo.hf.tokenizer.load_tokenizer`.
        texts: N strings.
        pooling: ``mean`` (over real tokens, specials included, as sentence-transformers does)
            or ``cls`` (the first token's state).
        normalize: L2-normalise each embedding.
        batch_size: texts per forward pass.
        max_len: the longest token sequence; None: ``cfg.max_seq_len``.

    Returns:
        ``[N, D]`` float32 embeddings, in the order of ``texts``.

    Raises:
        ConfigError: ``cfg`` is not an encoder, or ``pooling`` is unknown.
        DataError: no texts, a text without tokens, or ``max_len``/``batch_size`` out of range.
    """
    check_embed_kind(cfg.kind, "the model")
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling={pooling!r} is unknown; use one of {', '.join(POOLINGS)}")
    max_len = max_len or cfg.max_seq_len
    if not 1 <= max_len <= cfg.max_seq_len or batch_size < 1:
        raise DataError(
            f"max_len={max_len}, batch_size={batch_size}: use 1 <= max_len <= "
            f"model.max_seq_len={cfg.max_seq_len} and batch_size >= 1"
        )
    if not texts:
        raise DataError("no texts to embed; give at least one")
    kind = registry.get(cfg.kind)
    rows = tokenize(tokenizer, texts, max_len)
    out = np.zeros((len(rows), cfg.d_model), np.float32)
    for index, tokens, segment_ids in _batches(rows, batch_size, max_len, max(cfg.pad_id, 0)):
        batch = {"tokens": tokens, "segment_ids": segment_ids}
        kind.check_batch(batch, cfg)
        pooled = _pooled(params, tokens, segment_ids, cfg=cfg)[pooling]
        out[index] = np.asarray(pooled, np.float32)[: len(index)]
    return l2_normalize(out) if normalize else out


def cosine_similarity(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarities of the rows of ``a [N, D]`` and ``b [M, D]`` (default ``a``):
    ``[N, M]`` float32."""
    a = l2_normalize(a)
    b = a if b is None else l2_normalize(b)
    return a @ b.T


def embed_run(run_dir: str, texts: Sequence[str], **kw) -> np.ndarray:
    """:func:`embed_texts` with the config, newest params and tokenizer of a run directory.

    Raises:
        ConfigError: the run is not an encoder (checked before its params are loaded).
        CheckpointError: no run, params or tokenizer there.
    """
    check_embed_kind(ckpt.read_config(run_dir).model.kind, f"run {run_dir!r}")
    if not texts:
        raise DataError("no texts to embed; give at least one")
    cfg, params, _ = ckpt.load_params(run_dir)
    tokenizer = ckpt.read_tokenizer(run_dir)
    return embed_texts(params, cfg.model, tokenizer, texts, **kw)


__all__ = [
    "POOLINGS",
    "check_embed_kind",
    "cosine_similarity",
    "embed_run",
    "embed_texts",
    "l2_normalize",
    "tokenize",
]
