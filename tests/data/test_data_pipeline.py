"""Grain packing pipeline: hand-checked packing, invariants, checkpoint/resume, eval batches."""

import json

import numpy as np
import pytest

from llmzoo.data import build_source, make_eval_batches, make_lm_pipeline
from llmzoo.errors import DataError

# CharTokenizer (conftest): 'a' -> 10, 'b' -> 11, ...; eos = 3.
# Stream: 10 11 12 3 | 13 14 3 | 15 16 17 18 19 20 3, cut into rows of seq_len + 1 = 5 tokens:
#   [10 11 12 3 13] [14 3 15 16 17] [18 19 20 3 0(pad)]
DOCS = ["abc", "de", "fghijk"]
EXPECTED = {
    "tokens": [[10, 11, 12, 3], [14, 3, 15, 16], [18, 19, 20, 3]],
    "targets": [[11, 12, 3, 0], [3, 0, 16, 17], [19, 20, 3, 0]],
    "segment_ids": [[1, 1, 1, 1], [1, 1, 2, 2], [1, 1, 1, 1]],
    "positions": [[0, 1, 2, 3], [0, 1, 0, 1], [0, 1, 2, 3]],
    "loss_mask": [[1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 0]],
}
DTYPES = {"tokens": np.int32, "targets": np.int32, "segment_ids": np.int32}
DTYPES.update(positions=np.int32, loss_mask=np.float32)


def test_packing_by_hand(char_tokenizer):
    it = make_lm_pipeline(
        DOCS, char_tokenizer, seq_len=4, batch_size=1, seed=0, shuffle=False, num_epochs=1
    )
    batches = list(it)
    assert len(batches) == 3
    for key, rows in EXPECTED.items():
        got = np.concatenate([b[key] for b in batches])
        np.testing.assert_array_equal(got, np.array(rows))
        assert got.dtype == DTYPES[key]


def test_eval_batches_pad_the_last_batch(char_tokenizer):
    batches = make_eval_batches(DOCS, char_tokenizer, seq_len=4, batch_size=2)
    assert len(batches) == 2
    for key, rows in EXPECTED.items():
        got = np.concatenate([b[key] for b in batches])
        np.testing.assert_array_equal(got, np.array(rows + [[0, 0, 0, 0]]))
        assert got.dtype == DTYPES[key]
    assert len(make_eval_batches(DOCS, char_tokenizer, seq_len=4, batch_size=2, max_batches=1)) == 1


def check_invariants(batch, seq_len, batch_size):
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: ((batch_size, seq_len), np.dtype(d)) for k, d in DTYPES.items()
    }
    tok, tgt, seg = batch["tokens"], batch["targets"], batch["segment_ids"]
    pos, mask = batch["positions"], batch["loss_mask"]
    same_next = seg[:, :-1] == seg[:, 1:]
    # Targets are the next token within a segment; the mask is 0 across segment boundaries.
    np.testing.assert_array_equal(np.where(same_next, tok[:, 1:], tgt[:, :-1]), tgt[:, :-1])
    assert np.all(mask[:, :-1][~same_next] == 0)
    assert np.all(mask[seg == 0] == 0) and np.all(tgt[mask == 0] == 0)
    # Segment ids start at 1 and count up by one; positions restart at each segment.
    assert np.all(seg[:, 0] == 1)
    assert np.all(np.isin(np.diff(seg, axis=1)[seg[:, 1:] > 0], (0, 1)))
    assert np.all(pos[:, 0] == 0)
    np.testing.assert_array_equal(pos[:, 1:][same_next], pos[:, :-1][same_next] + 1)
    assert np.all(pos[:, 1:][~same_next] == 0)


def test_invariants_on_pydoc(data_dir, tokenizer):
    source = build_source("pydoc_topics", "validation", data_dir=data_dir)
    it = make_lm_pipeline(source, tokenizer, seq_len=64, batch_size=4, seed=1)
    batches = [next(it) for _ in range(60)]  # Several epochs of the validation split.
    for batch in batches:
        check_invariants(batch, 64, 4)
    assert np.mean([b["loss_mask"].mean() for b in batches]) > 0.9
    assert sum(np.sum(b["tokens"] == tokenizer.eos_id) for b in batches) > 20


def test_resume_from_state_gives_identical_batches(data_dir, tokenizer):
    source = build_source("pydoc_topics", "validation", data_dir=data_dir)

    def pipeline():
        return make_lm_pipeline(source, tokenizer, seq_len=128, batch_size=3, seed=7)

    it = pipeline()
    for _ in range(11):  # Mid-document and past the first epoch.
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # States are JSON-serializable.
    expected = [next(it) for _ in range(8)]
    resumed = pipeline()
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_shuffle_depends_on_seed_only(char_tokenizer):
    docs = [chr(ord("a") + i) * (i + 1) for i in range(20)]

    def first_batch(seed):
        it = make_lm_pipeline(docs, char_tokenizer, seq_len=16, batch_size=2, seed=seed)
        return next(it)["tokens"]

    np.testing.assert_array_equal(first_batch(0), first_batch(0))
    assert not np.array_equal(first_batch(0), first_batch(1))


def test_bad_arguments(char_tokenizer):
    with pytest.raises(DataError, match="seq_len=0"):
        make_lm_pipeline(DOCS, char_tokenizer, seq_len=0, batch_size=1, seed=0)
    with pytest.raises(DataError, match="empty"):
        make_lm_pipeline([], char_tokenizer, seq_len=4, batch_size=1, seed=0)


def test_worker_processes_do_not_change_the_batches(data_dir, tokenizer):
    source = build_source("pydoc_topics", "validation", data_dir=data_dir)
    kwargs = dict(seq_len=64, batch_size=2, seed=3)
    local = make_lm_pipeline(source, tokenizer, **kwargs)
    workers = make_lm_pipeline(source, tokenizer, worker_count=2, **kwargs)
    try:
        for _ in range(20):
            want, got = next(local), next(workers)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
    finally:
        workers.close()
