"""Encoder model: bidirectional attention, padding, packing, ALBERT sharing, heads, batch checks.

Params are drawn in numpy from the spec shapes (non-zero biases, scales near 1) rather than with
``encoder.init``, which exercises every term and saves a compile per config. Every forward pass
has shape [2, 8], so each config compiles once.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.errors import ConfigError, DataError
from llmzoo.models import encoder
from llmzoo.params import flatten, unflatten
from llmzoo.presets import get_model_preset

CONFIGS = {
    "bert": get_model_preset("bert-tiny"),
    "albert": dataclasses.replace(
        get_model_preset("albert-tiny"), n_layers=3, head="pretraining", pooler=True
    ),
    "deberta": dataclasses.replace(
        get_model_preset("deberta_v2-tiny"),
        head="token_classification",
        num_labels=5,
        position_buckets=8,
        max_relative_positions=16,
    ),
}
B, T = 2, 8
_apply = jax.jit(encoder.apply, static_argnames=("cfg", "return_hidden"))


def _random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    flat = {}
    for name, spec in flatten(encoder.param_specs(cfg)).items():
        x = rng.standard_normal(spec.shape)
        leaf = name.split("/")[-1]
        if leaf == "scale":
            x = 1.0 + 0.1 * x
        elif leaf.startswith("b") or leaf == "bias":
            x = 0.1 * x
        elif leaf == "table":
            x = 0.1 * x
        else:
            x = x / np.sqrt(cfg.d_ff if leaf == "w_down" else cfg.d_model)
        flat[name] = jnp.asarray(x, jnp.float32)
    return unflatten(flat)


@pytest.fixture(scope="module")
def params():
    return {name: _random_params(cfg) for name, cfg in CONFIGS.items()}


def _tokens(seed=0):
    return jax.random.randint(jax.random.key(seed), (B, T), 3, 512)


def _run(params, name, **batch):
    return _apply(params[name], batch, cfg=CONFIGS[name])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_attention_is_bidirectional(params, name):
    tokens = _tokens()
    a = _run(params, name, tokens=tokens)["hidden"]
    b = _run(params, name, tokens=tokens.at[:, 6].set(7))["hidden"]
    assert a.shape == (B, T, CONFIGS[name].d_model)
    # Every earlier token sees the change.
    assert float(jnp.abs(a[:, :6] - b[:, :6]).max(axis=-1).min()) > 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_right_padding_does_not_change_real_tokens(params, name):
    tokens = _tokens()
    seg = jnp.asarray([[1] * 5 + [0] * 3, [1] * 8])
    noise = _tokens(1)  # the padding holds arbitrary ids: they must not matter
    padded = jnp.where(seg == 1, tokens, noise)
    a = _run(params, name, tokens=padded, segment_ids=seg)
    b = _run(params, name, tokens=jnp.where(seg == 1, tokens, 0), segment_ids=seg)
    np.testing.assert_allclose(a["hidden"][0, :5], b["hidden"][0, :5], atol=1e-6)
    if "pooled" in a:
        np.testing.assert_allclose(a["pooled"], b["pooled"], atol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_packed_row_equals_each_document_alone(params, name):
    tokens = _tokens()
    types = jnp.asarray([[0, 0, 1, 0, 0, 0, 1, 1]] * B)
    packed = dict(
        tokens=tokens,
        token_type_ids=types,
        segment_ids=jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 2]] * B),
        positions=jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 4]] * B),
    )
    got = _run(params, name, **packed)["hidden"]
    for start, length in ((0, 3), (3, 5)):  # each document alone, right-padded to T
        alone = dict(
            tokens=jnp.roll(tokens, -start, axis=1),
            token_type_ids=jnp.roll(types, -start, axis=1),
            segment_ids=jnp.asarray([[1] * length + [0] * (T - length)] * B),
        )
        ref = _run(params, name, **alone)["hidden"][:, :length]
        np.testing.assert_allclose(got[:, start : start + length], ref, atol=1e-5)


def test_heads_and_hidden_outputs(params):
    tokens = _tokens()
    bert = _apply(params["bert"], {"tokens": tokens}, cfg=CONFIGS["bert"], return_hidden=True)
    assert bert["logits"].shape == (B, T, 512) and bert["logits"].dtype == jnp.float32
    assert bert["all_hidden"].shape == (2, B, T, 64)
    np.testing.assert_array_equal(bert["all_hidden"][-1], bert["hidden"])
    albert = _run(params, "albert", tokens=tokens)
    assert albert["pair_logits"].shape == (B, 2) and albert["pooled"].shape == (B, 64)
    assert _run(params, "deberta", tokens=tokens)["logits"].shape == (B, T, 5)
    seq_cfg = dataclasses.replace(CONFIGS["bert"], head="sequence_classification", pooler=True)
    seq = encoder.apply(_random_params(seq_cfg), {"tokens": tokens}, cfg=seq_cfg)
    assert seq["logits"].shape == (B, 2) and set(seq) == {"hidden", "pooled", "logits"}


def test_albert_shares_one_layer(params):
    cfg = CONFIGS["albert"]
    stacked = dataclasses.replace(cfg, share_layers=False)
    shared_leaves = flatten(params["albert"]["layers"])
    for name, leaf in flatten(encoder.param_specs(stacked)["layers"]).items():
        assert shared_leaves[name].shape == leaf.shape[1:]  # no leading L axis
    # The shared layer applied L times equals L stacked copies of it.
    copies = jax.tree.map(lambda x: jnp.stack([x] * cfg.n_layers), params["albert"]["layers"])
    tokens = _tokens()
    a = _run(params, "albert", tokens=tokens)["hidden"]
    b = encoder.apply({**params["albert"], "layers": copies}, {"tokens": tokens}, cfg=stacked)
    np.testing.assert_allclose(a, b["hidden"], atol=1e-5)


def test_pooling_helpers():
    hidden = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    mask = jnp.asarray([[1, 1, 0], [2, 2, 2]])
    np.testing.assert_allclose(encoder.mean_pool(hidden, mask), [[1, 2], [8, 9]])
    np.testing.assert_allclose(encoder.cls_pool(hidden), hidden[:, 0])


def test_grad_and_dropout(params):
    cfg = dataclasses.replace(CONFIGS["deberta"], dropout=0.1)
    tokens = _tokens()

    def loss(p, rng):
        out = encoder.apply(p, {"tokens": tokens}, cfg=cfg, rng=rng)
        return jnp.mean(out["logits"] ** 2)

    run = jax.jit(jax.value_and_grad(loss))
    key = jax.random.key(1)
    value, grads = run(params["deberta"], key)
    for name, g in flatten(grads).items():
        assert np.isfinite(g).all() and float(jnp.abs(g).max()) > 0, name
    assert value == run(params["deberta"], key)[0]  # dropout is a function of the key
    assert value != run(params["deberta"], jax.random.key(2))[0]


def test_check_batch_rejects_out_of_range_ids():
    cfg = CONFIGS["bert"]
    tokens = np.ones((B, T), np.int32)
    encoder.check_batch({"tokens": tokens, "token_type_ids": np.ones_like(tokens)}, cfg)
    with pytest.raises(DataError, match=r"token_type_ids holds id 2 but model.type_vocab_size=2"):
        encoder.check_batch({"tokens": tokens, "token_type_ids": tokens * 2}, cfg)
    with pytest.raises(DataError, match=r"tokens holds id 512 but model.vocab_size=512"):
        encoder.check_batch({"tokens": tokens * 512}, cfg)
    with pytest.raises(DataError, match="token_type_ids holds id 1 but model.type_vocab_size=0"):
        encoder.check_batch({"tokens": tokens, "token_type_ids": tokens}, CONFIGS["deberta"])
    with pytest.raises(DataError, match="positions holds id 128 but model.max_seq_len=128"):
        encoder.check_batch({"tokens": tokens, "positions": tokens * 128}, cfg)
    with pytest.raises(DataError, match="positions holds id 128 but model.max_seq_len=128"):
        encoder.check_batch({"tokens": np.ones((B, 130), np.int32)}, cfg)  # default positions
    encoder.check_batch({"tokens": np.ones((B, 130), np.int32)}, CONFIGS["deberta"])
    with pytest.raises(DataError, match="segment_ids"):
        encoder.check_batch({"tokens": tokens, "segment_ids": tokens[:, :3]}, cfg)


@pytest.mark.parametrize(
    "changes,key",
    [
        (dict(n_heads=5), "model.n_heads=5"),
        (dict(head="pretraining"), "model.head='pretraining'"),
        (dict(head="span"), "model.head='span'"),
        (dict(pos_att_type=("c2p", "c2p")), "model.pos_att_type"),
        (dict(position="rope"), "model.position='rope'"),
        (dict(type_vocab_size=-1), "model.type_vocab_size=-1"),
        (dict(kind="decoder"), "model.kind='decoder'"),
    ],
)
def test_config_errors_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(CONFIGS["bert"], **changes)
    assert CONFIGS["bert"].position_limit == 128
    assert CONFIGS["deberta"].position_limit is None
