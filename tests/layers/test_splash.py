"""Pallas splash attention (``model.attention_impl=splash``) against the dense path.

Off TPU the kernel runs in the Pallas interpreter (``fused.INTERPRET``): the same kernel code, its
block skipping, its segment ids and its custom backward, executed by XLA on CPU. Float32,
tolerance 1e-5. Lengths are multiples of 128, as the kernel needs, with block sizes of 128 and 256.
"""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo import sharding
from llmzoo.errors import ConfigError
from llmzoo.layers import attention_impl, fused
from llmzoo.layers.attention import MaskRule, dot_product_attention
from llmzoo.layers.attention_impl import attend, plan_attention, resolve_impl
from llmzoo.layers.positional import alibi_slopes
from llmzoo.models import decoder, encoder, seq2seq
from llmzoo.presets import get_model_preset
from tests.layers.test_blockwise import _check_model as check_model

B, T = 2, 256
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setattr(fused, "INTERPRET", True)
    monkeypatch.setattr(attention_impl, "_warned", set())


def _qkv(t=T, s=T, b=B, n=4, kh=2, h=16, seed=0):
    rng = np.random.default_rng(seed)  # numpy: no random program to compile per shape
    q = rng.standard_normal((b, t, n, h), np.float32)
    k = rng.standard_normal((b, s, kh, h), np.float32)
    return q, k, rng.standard_normal((b, s, kh, h), np.float32)


def _arange(t, b=B):
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


def _value_and_grads(fn, q, k, v, rule):
    """The output and d(sum(out * w))/d(q, k, v) for a fixed random w, under one jit."""
    w = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape, np.float32))
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, rule) * w)
    return jax.jit(lambda q, k, v: (fn(q, k, v, rule), jax.grad(loss, (0, 1, 2))(q, k, v)))(q, k, v)


def _dense(q, k, v, rule):
    return dot_product_attention(q, k, v, mask=rule.dense_mask())


def _splash(q, k, v, rule):
    return fused.splash_attention(q, k, v, rule)


def _assert_match(q, k, v, rule):
    out, grads = _value_and_grads(_splash, q, k, v, rule)
    ref, ref_grads = _value_and_grads(_dense, q, k, v, rule)
    np.testing.assert_allclose(out, ref, **TOL)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert bool(jnp.all(jnp.isfinite(g))), name
        np.testing.assert_allclose(g, r, **TOL, err_msg=f"d{name}")
    return out


def _rules():
    """Self-attention rules as llmzoo's batches build them; several have rows that see nothing."""
    pad = 40
    left_pad = jnp.array([[-1] * pad + list(range(T - pad)), list(range(T))])
    packed_pos = jnp.array([[*range(100), *range(156)], [*range(200), *[-1] * 56]])
    packed_seg = jnp.array([[1] * 100 + [2] * 156, [1] * 200 + [0] * 56])
    pad_segment = jnp.array([[1] * T, [1] * 180 + [0] * 76])  # padding as a segment of its own
    keys = jnp.where(_arange(T) < jnp.array([[T], [150]]), _arange(T), -1)
    enc_keys = jnp.where(pad_segment != 0, _arange(T), -1)  # as the encoder masks padding
    return {
        "causal": MaskRule(_arange(T), _arange(T)),
        "left_padding": MaskRule(left_pad, left_pad),
        "packed_segments": MaskRule(packed_pos, packed_pos, packed_seg, packed_seg),
        "padding_segment": MaskRule(_arange(T), _arange(T), pad_segment, pad_segment),
        "sliding_window": MaskRule(_arange(T), _arange(T), window=100),
        "window_and_segments": MaskRule(packed_pos, packed_pos, packed_seg, packed_seg, window=60),
        "key_padding_bidirectional": MaskRule(_arange(T), keys, causal=False),
        "encoder_padding": MaskRule(_arange(T), enc_keys, pad_segment, pad_segment, causal=False),
    }


@pytest.mark.parametrize("name", list(_rules()))
def test_matches_dense(name, interpret):
    rule = _rules()[name]
    assert fused.splash_problem(rule) is None
    q, k, v = _qkv()
    out = _assert_match(q, k, v, rule)
    seen = jnp.any(rule.dense_mask()[:, 0], axis=-1)  # [B, T]
    assert bool(jnp.all(jnp.where(seen[..., None, None], True, out == 0.0)))


def test_cross_attention_and_head_groupings(interpret):
    q, k, v = _qkv(t=128, s=384, n=4, kh=1, seed=1)  # MQA, blocks of 128 against 128
    keys = jnp.where(_arange(384) < jnp.array([[384], [300]]), _arange(384), -1)
    _assert_match(q, k, v, MaskRule(_arange(128), keys, causal=False))
    q, k, v = _qkv(t=384, s=384, n=2, kh=2, seed=2)
    _assert_match(q, k, v, MaskRule(_arange(384), _arange(384)))


@pytest.mark.parametrize("kh", [2, 1], ids=["heads_split", "mqa_heads_whole"])
def test_sharded_over_batch_and_heads_equals_one_device(kh, interpret):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    q, k, v = _qkv(b=4, n=4, kh=kh, seed=3)  # one KV head cannot split over tensor=2
    pos = jnp.broadcast_to(jnp.arange(T), (4, T))
    seg = jnp.array([[1] * T, [1] * 90 + [2] * 166, [1] * T, [1] * 200 + [0] * 56])
    rule = MaskRule(pos, pos, seg, seg)
    ref, ref_grads = _value_and_grads(_splash, q, k, v, rule)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    with sharding.use_mesh(mesh):
        traced = jax.jit(_splash).trace(q, k, v, rule)
        out, grads = _value_and_grads(_splash, q, k, v, rule)
    assert "shard_map" in str(traced.jaxpr)
    np.testing.assert_allclose(out, ref, **TOL)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, **TOL)
    np.testing.assert_allclose(ref, _dense(q, k, v, rule), **TOL)


def test_falls_back_where_it_cannot_run(monkeypatch):
    monkeypatch.setattr(attention_impl, "_warned", set())
    rule = MaskRule(_arange(T), _arange(T))
    args = dict(dtype="float32", head_dim=16, t=T, s=T, rule=rule)
    if jax.default_backend() != "tpu":
        with pytest.warns(RuntimeWarning, match="backend is not a TPU; using blockwise"):
            assert resolve_impl("splash", **args) == "blockwise"
        with warnings.catch_warnings():  # a second request does not warn again
            warnings.simplefilter("error")
            assert resolve_impl("splash", **args) == "blockwise"
        assert resolve_impl("auto", **args) != "splash"
    monkeypatch.setattr(fused, "INTERPRET", True)
    assert resolve_impl("splash", **args) == "splash"
    assert resolve_impl("auto", **args) == "dense"  # H = 16: auto keeps splash for H % 128 == 0
    assert resolve_impl("auto", **dict(args, head_dim=128)) == "splash"
    odd = MaskRule(_arange(100), _arange(100))
    cases = {
        "takes no ALiBi": dict(args, alibi=True),
        "divisible by 128, not T=100": dict(args, t=100, s=100, rule=odd),
        "needs self-attention": dict(args, s=2 * T, rule=MaskRule(_arange(T), _arange(2 * T))),
        "only with a causal mask": dict(
            args, rule=MaskRule(_arange(T), _arange(T), causal=False, window=8)
        ),
    }
    for message, case in cases.items():
        with pytest.warns(RuntimeWarning, match=message):
            assert resolve_impl("splash", **case) == "blockwise"
    plan = plan_attention(rule, impl="splash", head_dim=16)
    assert plan.impl == "splash" and plan.mask is None and plan.bias is None
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="needs the dense implementation"):
        attend(q, k, v, plan, bias=jnp.zeros((B, 4, T, T)))
    alibi = plan_attention(rule, impl="splash", head_dim=16, alibi_slopes=alibi_slopes(4))
    assert alibi.impl == "blockwise"


def test_config_validation():
    t5 = get_model_preset("t5-tiny")
    with pytest.raises(ConfigError, match="cannot compute T5's relative position bias"):
        dataclasses.replace(t5, attention_impl="splash")
    gpt2 = dataclasses.replace(get_model_preset("gpt2-tiny"), attention_impl="splash")
    assert gpt2.attention_impl == "splash"


def _check_model(module, cfg, batch, monkeypatch):
    """The splash kernel runs (a pallas_call), and logits and gradients equal dense's (1e-5)."""
    splash = dataclasses.replace(cfg, attention_impl="splash")
    apply = lambda params: module.apply(params, batch, cfg=splash)["logits"]  # noqa: E731
    assert "pallas_call" in str(jax.make_jaxpr(apply)(module.init(jax.random.key(0), cfg)))
    check_model(module, cfg, batch, monkeypatch, impl="splash")


def test_decoder_splash_equals_dense(interpret, monkeypatch):
    cfg = dataclasses.replace(
        get_model_preset("llama-tiny"), n_kv_heads=2, sliding_window=64, max_seq_len=T
    )
    tokens = jax.random.randint(jax.random.key(0), (B, T), 0, cfg.vocab_size)
    positions = jnp.array([[*range(100), *range(156)], [-1] * 30 + list(range(226))])
    segments = jnp.array([[1] * 100 + [2] * 156, [0] * 30 + [1] * 226])
    batch = {"tokens": tokens, "positions": positions, "segment_ids": segments}
    _check_model(decoder, cfg, batch, monkeypatch)


def test_encoder_splash_equals_dense(interpret, monkeypatch):
    cfg = dataclasses.replace(get_model_preset("bert-tiny"), head="mlm", max_seq_len=T)
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)
    segments = jnp.array([[1] * T, [1] * 170 + [0] * 86])  # row 1 right-padded
    _check_model(encoder, cfg, {"tokens": tokens, "segment_ids": segments}, monkeypatch)


def test_seq2seq_splash_equals_dense(interpret, monkeypatch):
    cfg = dataclasses.replace(get_model_preset("bart-tiny"), vocab_size=64, max_seq_len=T)
    keys = jax.random.split(jax.random.key(2), 2)
    batch = {  # cross-attention: 128 decoder queries against 256 source keys, some padding
        "inputs": jax.random.randint(keys[0], (B, T), 0, 64),
        "input_mask": jnp.array([[1] * T, [1] * 190 + [0] * 66]),
        "decoder_inputs": jax.random.randint(keys[1], (B, 128), 0, 64),
        "decoder_mask": jnp.array([[1] * 128, [1] * 100 + [0] * 28]),
    }
    _check_model(seq2seq, cfg, batch, monkeypatch)
