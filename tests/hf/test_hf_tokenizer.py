"""Tokenizers shipped with checkpoints: tokenizer.json (tokenizers) and tokenizer.model (SP)."""

from __future__ import annotations

import json

import pytest

from llmzoo.errors import DataError
from llmzoo.hf import load_tokenizer

TEXT = ["the quick brown fox jumps over the lazy dog", "hello world, hello tokenizer"] * 20


def test_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXT, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "<pad>"})
    )
    loaded = load_tokenizer(tmp_path)
    ids = loaded.encode("hello lazy fox")
    assert ids and loaded.decode(ids) == "hello lazy fox"
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (0, 2, 3)
    assert loaded.decode([loaded.bos_id, *ids, loaded.eos_id]) == "hello lazy fox"
    assert loaded.vocab_size == tok.get_vocab_size()


def test_sentencepiece_model(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    (tmp_path / "corpus.txt").write_text("\n".join(TEXT))
    spm.SentencePieceTrainer.Train(
        input=str(tmp_path / "corpus.txt"),
        model_prefix=str(tmp_path / "tokenizer"),
        vocab_size=60,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=3,
        minloglevel=2,
    )
    loaded = load_tokenizer(tmp_path)
    ids = loaded.encode("hello world")
    assert loaded.decode(ids) == "hello world"
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id, loaded.vocab_size) == (1, 2, 3, 60)


def test_missing_tokenizer(tmp_path):
    with pytest.raises(DataError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)
