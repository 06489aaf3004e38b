"""Pretraining corruption (MLM, T5 spans, BART denoising, NSP/SOP): statistics over 10k examples."""

import math

import numpy as np
import pytest

from llmzoo.errors import DataError
from llmzoo.objectives.denoising import (
    denoise_example,
    infill_spans,
    permute_sentences,
    text_infill,
)
from llmzoo.objectives.masking import mask_tokens, word_starts_from_pieces
from llmzoo.objectives.pairs import nsp_pairs, sop_pairs
from llmzoo.objectives.spans import (
    random_spans_noise_mask,
    reassemble,
    span_corrupt,
    span_corrupt_batch,
    span_corruption_lengths,
)

N = 10_000
VOCAB = 1000
PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIAL = (PAD, CLS, SEP, MASK)
SENTINELS = VOCAB - 1 - np.arange(100)  # T5's <extra_id_0>, <extra_id_1>, ...


# ---------------------------------------------------------------- BERT masked LM


def _mlm_batch(rng):
    """``[N, 128]`` random tokens with [CLS] first, some special ids, and random-length padding."""
    tokens = rng.integers(0, VOCAB - 100, (N, 128))
    tokens[:, 0] = CLS
    valid = np.arange(128) < rng.integers(64, 129, N)[:, None]
    return tokens, valid


def test_mask_tokens_rates():
    rng = np.random.default_rng(0)
    tokens, valid = _mlm_batch(rng)
    inputs, targets, loss_mask = mask_tokens(
        tokens, rng, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL, valid=valid
    )
    assert inputs.dtype == targets.dtype == np.int32 and loss_mask.dtype == np.float32
    np.testing.assert_array_equal(targets, tokens)
    selected = loss_mask.astype(bool)
    candidate = valid & ~np.isin(tokens, SPECIAL)
    assert not (selected & ~candidate).any()  # Never special ids nor padding.
    np.testing.assert_array_equal(inputs[~selected], tokens[~selected])

    rate = selected.sum() / candidate.sum()
    masked = (inputs[selected] == MASK).mean()
    kept = (inputs[selected] == tokens[selected]).mean()
    randomised = selected & (inputs != MASK) & (inputs != tokens)
    random_rate = randomised.sum() / selected.sum()
    print(f"\nMLM: selected {rate:.4f} mask {masked:.4f} random {random_rate:.4f} kept {kept:.4f}")
    assert abs(rate - 0.15) < 0.01
    assert abs(masked - 0.8) < 0.01
    assert abs(random_rate - 0.1) < 0.01
    assert abs(kept - 0.1) < 0.01
    assert not np.isin(inputs[randomised], SPECIAL).any()
    assert inputs.min() >= 0 and inputs.max() < VOCAB
    # Random ids are uniform over the whole vocabulary, not only over the ids of the text.
    assert (inputs[randomised] >= VOCAB - 100).mean() == pytest.approx(0.1, abs=0.01)


def test_mask_tokens_whole_words():
    rng = np.random.default_rng(1)
    tokens, valid = _mlm_batch(rng)
    word_starts = rng.random(tokens.shape) < 0.4  # Words of 2.5 pieces on average.
    _, _, loss_mask = mask_tokens(
        tokens,
        rng,
        mask_id=MASK,
        vocab_size=VOCAB,
        special_ids=SPECIAL,
        word_starts=word_starts,
        valid=valid,
    )
    selected = loss_mask.astype(bool)
    candidate = valid & ~np.isin(tokens, SPECIAL)
    assert not (selected & ~candidate).any()
    same_word = ~word_starts[:, 1:] & candidate[:, 1:] & candidate[:, :-1]
    np.testing.assert_array_equal(selected[:, 1:][same_word], selected[:, :-1][same_word])
    rate = selected.sum() / candidate.sum()
    multi = (selected[:, 1:] & same_word).sum() / selected.sum()
    print(f"\nwhole-word MLM: token fraction {rate:.4f}, non-first pieces {multi:.3f}")
    assert abs(rate - 0.15) < 0.01
    assert multi > 0.5  # Most masked pieces belong to a multi-piece word.


def test_mask_tokens_one_row_and_determinism():
    row = np.arange(10, 138)
    a = mask_tokens(row, np.random.default_rng(5), mask_id=MASK, vocab_size=VOCAB)
    b = mask_tokens(row, np.random.default_rng(5), mask_id=MASK, vocab_size=VOCAB)
    assert a[0].shape == row.shape
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_word_starts_from_pieces():
    sp = ["▁The", "▁quick", "est", "▁fox", "."]
    wp = ["[CLS]", "the", "quick", "##est", "fox", "[SEP]"]
    np.testing.assert_array_equal(word_starts_from_pieces(sp), [1, 1, 0, 1, 0])
    np.testing.assert_array_equal(word_starts_from_pieces(wp), [1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(word_starts_from_pieces(["est", "▁a"]), [1, 1])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mask_prob": 0.0},
        {"mask_prob": 1.5},
        {"mask_id": -1},
        {"random_prob": 0.6, "keep_prob": 0.6},
        {"valid": np.ones((2, 3))},
    ],
)
def test_mask_tokens_errors(kwargs):
    args = {"mask_id": MASK, "vocab_size": VOCAB} | kwargs
    with pytest.raises(DataError):
        mask_tokens(np.ones((2, 4), int), np.random.default_rng(0), **args)


def test_mask_tokens_rejects_empty_tokens():
    with pytest.raises(DataError, match="non-empty"):
        mask_tokens(np.zeros((0,), int), np.random.default_rng(0), mask_id=MASK, vocab_size=VOCAB)


# ---------------------------------------------------------------- T5 span corruption


def _run_lengths(mask):
    """Lengths of the runs of True in each row of ``[B, L]`` (runs must not cross rows)."""
    starts = mask & ~np.pad(mask, ((0, 0), (1, 0)))[:, :-1]
    ends = mask & ~np.pad(mask, ((0, 0), (0, 1)))[:, 1:]
    return np.flatnonzero(ends) - np.flatnonzero(starts) + 1


def test_random_spans_noise_mask_statistics():
    rng = np.random.default_rng(2)
    length = 568
    masks = np.stack([random_spans_noise_mask(length, rng) for _ in range(N)])
    assert not masks[:, 0].any() and masks[:, -1].all()  # Non-noise first, noise last, as T5.
    noise, kept = _run_lengths(masks), _run_lengths(~masks)
    density, mean_span = masks.mean(), noise.mean()
    print(f"\nspans: density {density:.4f} mean noise span {mean_span:.3f}")
    assert abs(density - 0.15) < 0.01
    assert abs(mean_span - 3.0) < 0.05 * 3.0
    # 85 noise and 483 kept tokens in 28 spans each, every composition equally likely:
    # P(a span has length 1) = (k - 1) / (n - 1).
    assert len(noise) == len(kept) == 28 * N
    assert (noise == 1).mean() == pytest.approx(27 / 84, abs=0.01)
    assert (kept == 1).mean() == pytest.approx(27 / 482, abs=0.01)
    # Noise falls evenly on the first and the second half of a row.
    assert masks[:, : length // 2].mean() == pytest.approx(density, abs=0.01)


def test_span_corrupt_example():
    tokens = np.arange(10, 16)
    inputs, targets = span_corrupt(
        tokens,
        np.random.default_rng(0),
        noise_density=0.3,
        mean_span_length=1.5,
        sentinel_ids=[100, 101],
        eos_id=1,
    )
    # round(6 * 0.3) = 2 noise tokens in round(2 / 1.5) = 1 span, which must end the sequence.
    np.testing.assert_array_equal(inputs, [10, 11, 12, 13, 100, 1])
    np.testing.assert_array_equal(targets, [100, 14, 15, 1])


def test_span_corrupt_reassemble_roundtrip():
    rng = np.random.default_rng(3)
    rows = rng.integers(0, VOCAB - 100, (N, 300))
    lengths = rng.integers(1, 301, N)
    failures = 0
    for i, (row, length) in enumerate(zip(rows, lengths, strict=True)):
        eos = 1 if i % 2 else None
        inputs, targets = span_corrupt(row[:length], rng, sentinel_ids=SENTINELS, eos_id=eos)
        failures += not np.array_equal(reassemble(inputs, targets, SENTINELS, eos), row[:length])
    assert failures == 0


def test_span_corruption_lengths_matches_t5():
    def inputs_and_targets(t):  # random_spans_helper: sentinel per span, one eos each.
        noise = round(t * 0.15)
        spans = round(noise / 3.0)
        return t - noise + spans + 1, noise + spans + 1

    tokens_length = max(t for t in range(512, 700) if inputs_and_targets(t)[0] <= 512)
    expected = tokens_length, inputs_and_targets(tokens_length)[1]
    assert expected == (568, 114)  # The figures of T5's 512-token pretraining.
    assert span_corruption_lengths(512, 0.15, 3.0) == expected

    rows = np.random.default_rng(4).integers(0, VOCAB - 100, (8, 568))
    kwargs = {"inputs_length": 512, "targets_length": 114, "sentinel_ids": SENTINELS, "eos_id": 1}
    batch = span_corrupt_batch(rows, np.random.default_rng(4), **kwargs)
    assert batch["inputs"].shape == (8, 512) and batch["targets"].shape == (8, 114)
    assert batch["input_mask"].all() and batch["target_mask"].all()  # Filled exactly.
    assert (batch["inputs"][:, -1] == 1).all() and (batch["targets"][:, -1] == 1).all()
    np.testing.assert_array_equal(
        reassemble(batch["inputs"][0], batch["targets"][0], SENTINELS, 1), rows[0]
    )
    again = span_corrupt_batch(rows, np.random.default_rng(4), **kwargs)
    for key in batch:  # Deterministic given the generator.
        np.testing.assert_array_equal(batch[key], again[key])


def test_span_corrupt_batch_pads_and_rejects_long_rows():
    rng = np.random.default_rng(5)
    batch = span_corrupt_batch(
        [np.arange(10, 110)], rng, inputs_length=128, targets_length=32, sentinel_ids=SENTINELS
    )
    n = batch["input_mask"].sum()
    assert n == 100 - 15 + 5 and (batch["inputs"][0, n:] == 0).all()
    assert batch["target_mask"].sum() == 15 + 5 and batch["target_mask"].dtype == np.float32
    with pytest.raises(DataError, match="span_corruption_lengths"):
        span_corrupt_batch(
            [np.arange(10, 700)], rng, inputs_length=512, targets_length=114, sentinel_ids=SENTINELS
        )


def test_span_corrupt_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="more sentinels"):
        span_corrupt(np.full(3000, 10), rng, sentinel_ids=SENTINELS)  # 150 spans > 100.
    with pytest.raises(DataError, match="sentinel"):
        span_corrupt(np.array([10, VOCAB - 1]), rng, sentinel_ids=SENTINELS)
    with pytest.raises(DataError, match="noise_density"):
        span_corrupt(np.arange(10, 20), rng, noise_density=1.0, sentinel_ids=SENTINELS)
    with pytest.raises(DataError, match="non-empty"):
        span_corrupt(np.array([], int), rng, sentinel_ids=SENTINELS)


# ---------------------------------------------------------------- BART denoising


def test_text_infill_statistics():
    length, removed_total, positive_spans, masks_total = 128, 0, [], 0
    by_quarter = np.zeros(4)
    rows = np.random.default_rng(11).integers(10, VOCAB, (N, length))
    failures = 0
    for seed, tokens in enumerate(rows):
        starts, lengths = infill_spans(length, np.random.default_rng(seed))
        inputs = text_infill(tokens, np.random.default_rng(seed), mask_id=MASK)
        assert (starts[1:] >= starts[:-1] + lengths[:-1]).all()  # Sorted, not overlapping.
        assert starts[-1] + lengths[-1] <= length
        removed = np.zeros(length + 1, int)
        np.add.at(removed, starts, 1)
        np.add.at(removed, starts + lengths, -1)
        removed = np.cumsum(removed[:-1]) > 0
        failures += not np.array_equal(inputs[inputs != MASK], tokens[~removed])
        failures += (inputs == MASK).sum() != len(starts)  # One mask per span, 0-length too.
        removed_total += length - (len(inputs) - len(starts))
        positive_spans.append(lengths[lengths > 0])
        masks_total += len(starts)
        by_quarter += removed.reshape(4, -1).mean(1)
    positive = np.concatenate(positive_spans)
    ratio = removed_total / (N * length)
    spans = masks_total / N
    print(f"\ninfill: masked {ratio:.4f} mean span {positive.mean():.3f} spans/seq {spans:.2f}")
    assert abs(ratio - 0.3) < 0.01
    assert abs(positive.mean() - 3.0) < 0.05 * 3.0
    assert failures == 0
    np.testing.assert_allclose(by_quarter / N, ratio, atol=0.01)  # Spans land evenly.


def _unique_sentences(rng):
    """2-5 sentences, sentence j ``1000 (j + 1) + arange(n)`` then the end id ``100_000 + j``.

    The last sentence lacks its end id half of the time.
    """
    sizes = rng.integers(1, 9, rng.integers(2, 6))
    sentences = [np.append(1000 * (j + 1) + np.arange(n), 100_000 + j) for j, n in enumerate(sizes)]
    if rng.random() < 0.5:
        sentences[-1] = sentences[-1][:-1]
    return sentences


def test_permute_sentences_is_a_sentence_permutation():
    rng = np.random.default_rng(6)
    ends = np.arange(100_000, 100_010)
    changed, expected_changed, failures = 0, 0.0, 0
    for _ in range(N):
        sentences = _unique_sentences(rng)
        out = permute_sentences(np.concatenate(sentences), rng, sentence_end_ids=ends)
        owner = np.where(out >= 100_000, out - 100_000, out // 1000 - 1)
        order = owner[np.flatnonzero(np.diff(owner, prepend=-1))]  # Sentence of each block.
        failures += sorted(order) != list(range(len(sentences)))  # Each sentence once, whole.
        failures += not np.array_equal(out, np.concatenate([sentences[i] for i in order]))
        changed += (order != np.arange(len(order))).any()
        expected_changed += 1 - 1 / math.factorial(len(sentences))
    print(f"\npermute: order changed {changed / N:.4f} (expected {expected_changed / N:.4f})")
    assert failures == 0
    assert abs(changed - expected_changed) / N < 0.01


def test_denoise_example():
    rng = np.random.default_rng(7)
    tokens = np.concatenate(_unique_sentences(rng))
    inputs, targets = denoise_example(
        tokens, rng, mask_id=MASK, sentence_end_ids=range(100_000, 100_010)
    )
    np.testing.assert_array_equal(targets, tokens)
    assert set(inputs[inputs != MASK].tolist()) <= set(tokens.tolist())
    plain = denoise_example(tokens, np.random.default_rng(8), mask_id=MASK, permute=False)[0]
    np.testing.assert_array_equal(
        plain, text_infill(tokens, np.random.default_rng(8), mask_id=MASK)
    )
    with pytest.raises(DataError, match="sentence_end_ids"):
        denoise_example(tokens, rng, mask_id=MASK)
    with pytest.raises(DataError, match="mask_ratio"):
        text_infill(tokens, rng, mask_ratio=0.0, mask_id=MASK)


# ---------------------------------------------------------------- NSP / SOP

SEGMENTS_PER_DOC = 11


def _docs(rng, n_docs=N // (SEGMENTS_PER_DOC - 1)):
    """Segment i of document d holds ``10 + 32 s + arange(n)``, ``s = 11 d + i``, n in [1, 20]."""
    lengths = rng.integers(1, 21, (n_docs, SEGMENTS_PER_DOC))
    docs = [
        [10 + 32 * (SEGMENTS_PER_DOC * d + i) + np.arange(n) for i, n in enumerate(row)]
        for d, row in enumerate(lengths)
    ]
    return docs, lengths.ravel()


def _parse_rows(out):
    """Checks every ``[CLS] A [SEP] B [SEP]`` row; ``(segment s, first offset, length)`` of A, B."""
    tokens, types, valid = out["tokens"], out["token_type_ids"], out["valid"].astype(bool)
    rows, cols = np.arange(len(tokens)), np.arange(tokens.shape[1])
    n = valid.sum(1)
    sep = np.argmax(tokens == SEP, axis=1)
    assert (tokens[:, 0] == CLS).all() and (tokens[rows, n - 1] == SEP).all()
    assert ((tokens == SEP).sum(1) == 2).all() and not tokens[~valid].any()
    np.testing.assert_array_equal(valid, cols < n[:, None])
    np.testing.assert_array_equal(types, (cols > sep[:, None]) & valid)  # 1 from B to its [SEP].
    # Inside A and inside B ids step by one: each is a contiguous piece of one segment.
    left, right = cols[:-1], cols[1:]
    in_a = (left >= 1) & (right < sep[:, None])
    in_b = (left > sep[:, None]) & (right < n[:, None] - 1)
    assert (np.diff(tokens, axis=1)[in_a | in_b] == 1).all()
    a_first, b_first = tokens[:, 1] - 10, tokens[rows, sep + 1] - 10
    return (a_first // 32, a_first % 32, sep - 1), (b_first // 32, b_first % 32, n - sep - 2)


def _first_segments():
    """The segment ``s`` of the earlier segment of each pair, in document order."""
    r = np.arange(N)
    return SEGMENTS_PER_DOC * (r // (SEGMENTS_PER_DOC - 1)) + r % (SEGMENTS_PER_DOC - 1)


def test_nsp_pairs():
    rng = np.random.default_rng(9)
    docs, seg_len = _docs(rng)
    out = nsp_pairs(docs, rng, max_length=48, cls_id=CLS, sep_id=SEP)
    labels = out["next_sentence_label"].astype(bool)
    assert out["tokens"].shape == (N, 48) and labels.shape == (N,)
    (a, a_off, a_len), (b, b_off, b_len) = _parse_rows(out)
    np.testing.assert_array_equal(a, _first_segments())
    assert not a_off.any() and not b_off.any()  # 48 tokens fit every pair: no truncation.
    assert (a_len == seg_len[a]).all() and (b_len == seg_len[b]).all()
    np.testing.assert_array_equal(b[~labels], a[~labels] + 1)  # IsNext: the next segment.
    assert (b[labels] // SEGMENTS_PER_DOC != a[labels] // SEGMENTS_PER_DOC).all()  # Other doc.
    random_segment = (b[labels] % SEGMENTS_PER_DOC).mean()
    print(f"\nNSP: NotNext {labels.mean():.4f}, mean random segment {random_segment:.2f}")
    assert abs(labels.mean() - 0.5) < 0.02
    assert abs(random_segment - 5.0) < 0.2  # Uniform over the 11 segments of a document.


def _truncate_seq_pair(len_a, len_b, budget):
    """BERT's ``truncate_seq_pair`` loop, on lengths."""
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def test_sop_pairs_and_truncation():
    rng = np.random.default_rng(10)
    docs, seg_len = _docs(rng)
    out = sop_pairs(docs, rng, max_length=16, cls_id=CLS, sep_id=SEP)
    labels = out["sentence_order_label"]
    (a, a_off, a_len), (b, b_off, b_len) = _parse_rows(out)
    first = _first_segments()
    np.testing.assert_array_equal(a, first + labels)  # Swapped: the later segment comes first.
    np.testing.assert_array_equal(b, first + 1 - labels)
    expected = [_truncate_seq_pair(x, y, 13) for x, y in zip(seg_len[a], seg_len[b], strict=True)]
    np.testing.assert_array_equal(np.stack([a_len, b_len], 1), expected)
    assert (a_off + a_len <= seg_len[a]).all() and (b_off + b_len <= seg_len[b]).all()
    front = (a_off.sum() + b_off.sum()) / (seg_len[a] - a_len + seg_len[b] - b_len).sum()
    print(f"\nSOP: swapped {labels.mean():.4f}, truncated from the front {front:.3f}")
    assert abs(labels.mean() - 0.5) < 0.02
    assert abs(front - 0.5) < 0.02


def test_pairs_errors():
    rng = np.random.default_rng(0)
    docs, _ = _docs(rng, n_docs=2)
    with pytest.raises(DataError, match="at least 2"):
        nsp_pairs(docs[:1], rng, max_length=32, cls_id=CLS, sep_id=SEP)
    with pytest.raises(DataError, match="max_length"):
        sop_pairs(docs, rng, max_length=4, cls_id=CLS, sep_id=SEP)
    with pytest.raises(DataError, match="empty"):
        sop_pairs([docs[0] + [[]]], rng, max_length=32, cls_id=CLS, sep_id=SEP)
