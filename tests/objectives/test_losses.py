"""Losses handed to the train step, against torch.nn.functional.cross_entropy."""

import dataclasses

import jax
import numpy as np
import pytest

from llmzoo.errors import DataError
from llmzoo.models import encoder
from llmzoo.objectives import losses
from llmzoo.presets import get_model_preset

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _encoder(head, num_labels=3):
    pooler = head == "sequence_classification"
    cfg = dataclasses.replace(
        get_model_preset("bert-tiny"), head=head, num_labels=num_labels, pooler=pooler
    )
    return cfg, encoder.init(jax.random.key(0), cfg)


def _tokens(rng, b=4, t=10, vocab=512):
    return rng.integers(5, vocab, (b, t)).astype(np.int32)


def test_sequence_classification_loss_matches_torch():
    cfg, params = _encoder("sequence_classification")
    rng = np.random.default_rng(0)
    batch = {"tokens": _tokens(rng), "labels": np.array([0, 2, 1, 2], np.int32)}
    batch["example_mask"] = np.array([1, 1, 1, 0], np.float32)  # the last row is batch padding
    loss_sum, count, metrics = losses.sequence_classification_loss(params, batch, None, cfg=cfg)
    logits = np.asarray(encoder.apply(params, batch, cfg=cfg)["logits"])
    ref = F.cross_entropy(
        torch.tensor(logits[:3]), torch.tensor(batch["labels"][:3]).long(), reduction="sum"
    )
    assert float(count) == 3
    np.testing.assert_allclose(float(loss_sum), ref.item(), rtol=1e-5)
    correct = (logits[:3].argmax(-1) == batch["labels"][:3]).sum()
    assert float(metrics["accuracy"]) == correct


def test_token_classification_loss_matches_torch():
    cfg, params = _encoder("token_classification", num_labels=5)
    rng = np.random.default_rng(1)
    batch = {"tokens": _tokens(rng), "labels": rng.integers(0, 5, (4, 10)).astype(np.int32)}
    batch["loss_mask"] = (rng.random((4, 10)) < 0.7).astype(np.float32)
    loss_sum, count, _ = losses.token_classification_loss(params, batch, None, cfg=cfg)
    logits = np.asarray(encoder.apply(params, batch, cfg=cfg)["logits"])
    keep = batch["loss_mask"] > 0
    ref = F.cross_entropy(
        torch.tensor(logits[keep]), torch.tensor(batch["labels"][keep]).long(), reduction="sum"
    )
    assert float(count) == keep.sum()
    np.testing.assert_allclose(float(loss_sum), ref.item(), rtol=1e-5)


def test_token_loss_counts_only_masked_positions():
    cfg, params = _encoder("mlm")
    rng = np.random.default_rng(2)
    batch = {"tokens": _tokens(rng), "targets": _tokens(rng)}
    batch["loss_mask"] = np.zeros((4, 10), np.float32)
    batch["loss_mask"][:, 3] = 1.0
    loss_sum, count, metrics = losses.token_loss(params, batch, None, cfg=cfg)
    logits = np.asarray(encoder.apply(params, batch, cfg=cfg)["logits"])[:, 3]
    ref = F.cross_entropy(
        torch.tensor(logits), torch.tensor(batch["targets"][:, 3]).long(), reduction="sum"
    )
    assert float(count) == 4
    np.testing.assert_allclose(float(loss_sum), ref.item(), rtol=1e-5)
    assert float(metrics["accuracy"]) == (logits.argmax(-1) == batch["targets"][:, 3]).sum()


def test_label_outside_the_label_set_is_one_line():
    losses.check_labels(np.array([0, 1, 2]), 3)
    with pytest.raises(
        DataError, match=r"label 3 is outside the label set 0..2 \(model.num_labels=3\)"
    ):
        losses.check_labels(np.array([0, 3, 1]), 3)
    with pytest.raises(DataError, match="label -1 is outside"):
        losses.check_labels(np.array([[0, -1]]), 3)
    # labels at uncounted positions (padding) are not checked
    losses.check_labels(np.array([[0, 7]]), 3, mask=np.array([[1, 0]]))
