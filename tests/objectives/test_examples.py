"""Example builders: packed rows in, model batches out, as each objective defines them."""

import dataclasses

import numpy as np
import pytest

from llmzoo.config import ObjectiveConfig
from llmzoo.data.pipeline import lm_example
from llmzoo.errors import ConfigError
from llmzoo.objectives.examples import (
    CausalLmExamples,
    DenoisingExamples,
    MlmExamples,
    SpanCorruptionExamples,
    make_examples,
)
from llmzoo.objectives.spans import reassemble
from llmzoo.presets import get_model_preset, train_config_for


class PieceTokenizer:
    """200 ids; even ids start a word ('▁x'), odd ids continue one; 0 pad, 2 bos, 3 eos."""

    vocab_size, pad_id, bos_id, eos_id, mask_id = 200, 0, 2, 3, -1

    def id_to_piece(self, i):
        return f"▁w{i}" if i % 2 == 0 else f"p{i}"

    def decode(self, ids):
        return "".join("." if i == 9 else "x" for i in ids)


def _row(tokens, segments):
    tokens, segments = np.asarray(tokens, np.int32), np.asarray(segments, np.int32)
    positions = np.concatenate([np.arange((segments == s).sum()) for s in np.unique(segments)])
    return {"tokens": tokens, "tokens_segment_ids": segments, "tokens_positions": positions}


def _cfg(preset, objective, **model):
    cfg = train_config_for(dataclasses.replace(get_model_preset(preset), **model))
    return dataclasses.replace(cfg, seq_len=64, objective=objective)


def test_causal_lm_examples_are_the_packed_split():
    row = _row(np.arange(10, 27), [1] * 9 + [2] * 8)
    got, want = CausalLmExamples(16)(row), lm_example(row)
    assert CausalLmExamples(16).row_len == 17
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_whole_word_mlm_masks_whole_words_only():
    cfg = _cfg(
        "bert-tiny", ObjectiveConfig(name="mlm", whole_word=True, mask_prob=0.3), vocab_size=201
    )
    build = make_examples(cfg, PieceTokenizer())
    assert isinstance(build, MlmExamples) and build.row_len == 64
    rng = np.random.default_rng(0)
    masked_words = partial = 0
    for _ in range(200):
        tokens = rng.integers(10, 200, 64)
        out = build(_row(tokens, [1] * 64), rng)
        word = np.cumsum(tokens % 2 == 0)  # word index of every piece
        for w in np.unique(word):
            sel = out["loss_mask"][word == w]
            masked_words += sel.all()
            partial += sel.any() and not sel.all()
        assert (out["targets"][out["loss_mask"] > 0] == tokens[out["loss_mask"] > 0]).all()
        assert (out["tokens"] == 200).sum() > 0  # the mask id past the tokenizer's vocabulary
    assert partial == 0 and masked_words > 0


def test_span_corruption_examples_reassemble_and_shift():
    cfg = _cfg("t5-tiny", ObjectiveConfig(name="span_corruption"), vocab_size=232, eos_id=3)
    build = make_examples(cfg, PieceTokenizer())
    assert isinstance(build, SpanCorruptionExamples)
    rng = np.random.default_rng(1)
    sentinels = build.kwargs["sentinel_ids"]
    assert min(sentinels) >= 200 and max(sentinels) == 231
    for _ in range(50):
        tokens = rng.integers(10, 200, build.row_len)
        out = build(_row(tokens, [1] * build.row_len), rng)
        assert out["input_mask"].sum() == 64  # the inputs fill seq_len exactly
        n = int(out["loss_mask"].sum())
        got = reassemble(out["inputs"][:64], out["targets"][:n], sentinels, eos_id=3)
        np.testing.assert_array_equal(got, tokens)
        assert out["decoder_inputs"][0] == cfg.model.decoder_start_id
        np.testing.assert_array_equal(out["decoder_inputs"][1:], out["targets"][:-1])


def test_denoising_examples_reconstruct_the_row():
    objective = ObjectiveConfig(name="denoising", mask_ratio=0.3)
    cfg = _cfg("bart-tiny", objective, vocab_size=201, max_seq_len=64, decoder_start_id=3)
    build = make_examples(cfg, PieceTokenizer())
    assert isinstance(build, DenoisingExamples)
    rng = np.random.default_rng(2)
    tokens = rng.integers(10, 200, 64)
    tokens[::8] = 9  # sentence ends, so permutation has sentences to shuffle
    out = build(_row(tokens, [1] * 64), rng)
    np.testing.assert_array_equal(out["targets"], tokens)
    assert out["loss_mask"].sum() == 64 and (out["inputs"] == 200).sum() > 0
    assert out["input_mask"].sum() < 64  # spans collapsed to one mask each


def test_no_room_for_sentinels_names_the_size():
    cfg = _cfg("t5-tiny", ObjectiveConfig(name="span_corruption"), vocab_size=200)
    with pytest.raises(ConfigError, match=r"model.vocab_size=200 leaves no room for \d+ sentinels"):
        make_examples(cfg, PieceTokenizer())
