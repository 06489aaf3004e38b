"""Blockwise (flash) attention against the dense path: outputs and gradients, masks, models, memory.

Float32 throughout, tolerance 1e-5. Lengths (T = 13, S = 11) are not multiples of the blocks
(4 queries, 5 keys), so every test also exercises the internal padding and several blocks.
"""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.errors import ConfigError
from llmzoo.layers import attention_impl, blockwise, fused
from llmzoo.layers.attention import MaskRule, dot_product_attention
from llmzoo.layers.attention_impl import attend, plan_attention, resolve_impl
from llmzoo.layers.blockwise import blockwise_attention
from llmzoo.layers.positional import alibi_bias, alibi_slopes
from llmzoo.models import decoder, encoder, seq2seq
from llmzoo.models.encoder_config import EncoderConfig
from llmzoo.params import flatten, unflatten
from llmzoo.presets import get_model_preset

B, T, S = 2, 13, 11
TOL = dict(atol=1e-5, rtol=1e-5)


def _dense(q, k, v, rule, slopes=None, scale=None):
    bias = None if slopes is None else alibi_bias(slopes, rule.q_pos, rule.k_pos)
    return dot_product_attention(q, k, v, mask=rule.dense_mask(), bias=bias, scale=scale)


def _blockwise(q, k, v, rule, slopes=None, scale=None, block_q=4, block_k=5):
    return blockwise_attention(
        q, k, v, rule, alibi_slopes=slopes, scale=scale, block_q=block_q, block_k=block_k
    )


def _value_and_grads(fn, q, k, v, rule, **kw):
    """The output and d(sum(out * w))/d(q, k, v) for a fixed random w, under one jit."""
    w = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape, np.float32))
    out = lambda q, k, v: fn(q, k, v, rule, **kw)
    loss = lambda q, k, v: jnp.sum(out(q, k, v) * w)
    return jax.jit(lambda q, k, v: (out(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v)))(q, k, v)


def _qkv(t=T, s=S, n=6, kh=2, h=8, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)  # numpy: no random program to compile per shape
    q = rng.standard_normal((B, t, n, h), np.float32).astype(dtype)
    k = rng.standard_normal((B, s, kh, h), np.float32).astype(dtype)
    return q, k, rng.standard_normal((B, s, kh, h), np.float32).astype(dtype)


def _arange(t):
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (B, t))


def _assert_match(q, k, v, rule, **kw):
    out, grads = _value_and_grads(_blockwise, q, k, v, rule, **kw)
    ref, ref_grads = _value_and_grads(_dense, q, k, v, rule, **kw)
    np.testing.assert_allclose(out, ref, **TOL)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert bool(jnp.all(jnp.isfinite(g))), name
        np.testing.assert_allclose(g, r, **TOL, err_msg=f"d{name}")
    return out, grads


def _rules():
    """Self-attention (T x T) mask rules; the padded and packed ones have fully-masked rows."""
    left_pad = jnp.array([[-1, -1, -1, *range(10)], list(range(13))])
    packed_pos = jnp.array([[*range(6), *range(7)], [*range(10), -1, -1, -1]])
    packed_seg = jnp.array([[1] * 6 + [2] * 7, [1] * 10 + [0] * 3])
    right_pad_keys = jnp.where(_arange(T) < jnp.array([[13], [8]]), _arange(T), -1)
    return {
        "causal": MaskRule(_arange(T), _arange(T)),
        "left_padding": MaskRule(left_pad, left_pad),
        "key_padding_bidirectional": MaskRule(_arange(T), right_pad_keys, causal=False),
        "sliding_window": MaskRule(_arange(T), _arange(T), window=3),
        "packed_segments": MaskRule(packed_pos, packed_pos, packed_seg, packed_seg),
        "window_and_segments": MaskRule(packed_pos, packed_pos, packed_seg, packed_seg, window=2),
    }


@pytest.mark.parametrize("name", list(_rules()))
def test_matches_dense_gqa(name):
    q, k, v = _qkv(s=T)
    _assert_match(q, k, v, _rules()[name])


@pytest.mark.parametrize("n,kh", [(4, 4), (4, 1)], ids=["mha", "mqa"])
def test_matches_dense_head_groupings(n, kh):
    q, k, v = _qkv(s=T, n=n, kh=kh, seed=1)
    _assert_match(q, k, v, MaskRule(_arange(T), _arange(T)), scale=0.3)


def test_matches_jax_nn_causal():
    q, k, v = _qkv(s=T, seed=2)
    out = jax.jit(_blockwise)(q, k, v, MaskRule(_arange(T), _arange(T)))
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
    np.testing.assert_allclose(out, ref, **TOL)


@pytest.mark.parametrize(
    "name,n,kh",
    [("causal", 6, 2), ("left_padding", 6, 2), ("packed_segments", 6, 2), ("causal", 4, 4)],
)
def test_alibi_matches_dense(name, n, kh):
    """ALiBi inside the blocks, forward and custom backward; positions restart per segment."""
    q, k, v = _qkv(s=T, n=n, kh=kh, seed=3)
    _assert_match(q, k, v, _rules()[name], slopes=alibi_slopes(n))


def test_cross_lengths_and_key_padding():
    # T != S, bidirectional, source padding as position -1 (seq2seq cross-attention)
    q, k, v = _qkv(seed=4)
    k_pos = jnp.where(_arange(S) < jnp.array([[11], [6]]), _arange(S), -1)
    _assert_match(q, k, v, MaskRule(_arange(T), k_pos, causal=False))


@pytest.mark.parametrize("blocks", [(13, 13), (512, 512), (1, 3)], ids=["exact", "big", "tiny"])
def test_block_sizes_agree(blocks):
    q, k, v = _qkv(s=T, seed=5)
    rule = _rules()["packed_segments"]
    out = jax.jit(_blockwise, static_argnames=("block_q", "block_k"))(
        q, k, v, rule, block_q=blocks[0], block_k=blocks[1]
    )
    np.testing.assert_allclose(out, jax.jit(_dense)(q, k, v, rule), **TOL)


def test_fully_masked_rows_are_zero_without_nan():
    q, k, v = _qkv(s=T, seed=6)
    rule = _rules()["left_padding"]  # row 0's first 3 queries (position -1) see no key
    out, (dq, dk, dv) = _assert_match(q, k, v, rule)
    np.testing.assert_array_equal(out[0, :3], 0.0)
    np.testing.assert_array_equal(dq[0, :3], 0.0)
    assert float(jnp.abs(out[0, 3:]).min()) > 0 and float(jnp.abs(dv[0, 3:]).max()) > 0
    # no key at all in the row (every key padding)
    empty = MaskRule(_arange(T), jnp.full((B, T), -1), causal=False)
    out, grads = _assert_match(q, k, v, empty)
    np.testing.assert_array_equal(out, 0.0)
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)


def test_bfloat16_close_to_float32():
    q, k, v = _qkv(s=T, seed=7)
    rule = _rules()["causal"]
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out, grads = _value_and_grads(_blockwise, *low, rule)
    ref, ref_grads = _value_and_grads(_dense, q, k, v, rule)
    assert out.dtype == jnp.bfloat16 and grads[0].dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=3e-2)
    np.testing.assert_allclose(grads[2].astype(jnp.float32), ref_grads[2], atol=6e-2)


# ---------------------------------------------------------------------------------------------
# The switch


def test_resolve_impl_on_cpu(monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU fallback")
    monkeypatch.setattr(attention_impl, "_warned", set())
    args = dict(dtype="bfloat16", head_dim=64, t=64, s=64)
    with pytest.warns(RuntimeWarning, match="cpu backend has no cuDNN; using blockwise"):
        assert resolve_impl("cudnn", **args) == "blockwise"
    with warnings.catch_warnings():  # a second request does not warn again
        warnings.simplefilter("error")
        assert resolve_impl("cudnn", **args) == "blockwise"
    assert resolve_impl("auto", **args) == "dense"
    assert (
        resolve_impl("auto", **{**args, "s": attention_impl.AUTO_BLOCKWISE_MIN_LEN}) == "blockwise"
    )
    assert resolve_impl("blockwise", **args) == "blockwise"


@pytest.mark.gpu
@pytest.mark.parametrize("alibi", [False, True], ids=["plain", "alibi"])
def test_cudnn_matches_dense_on_gpu(alibi):
    if fused.cudnn_problem("bfloat16", 64, 16, 16) is not None:
        pytest.skip("needs cuDNN flash attention (a GPU)")
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(t=16, s=16, h=64, seed=8))
    pos = jnp.array([[-1, -1, *range(14)], list(range(16))])
    rule = MaskRule(pos, pos)
    slopes = alibi_slopes(6) if alibi else None  # cuDNN gets the materialised ALiBi bias
    plan = plan_attention(rule, impl="cudnn", dtype="bfloat16", head_dim=64, alibi_slopes=slopes)
    assert plan.impl == "cudnn"
    out = jax.jit(attend)(q, k, v, plan).astype(jnp.float32)
    ref = _dense(*(x.astype(jnp.float32) for x in (q, k, v)), rule, slopes=slopes)
    np.testing.assert_allclose(out, ref, atol=3e-2)
    np.testing.assert_array_equal(out[0, :2], 0.0)


def test_plans_hold_only_what_they_use():
    rule = MaskRule(_arange(T), _arange(T))
    dense = plan_attention(rule, impl="dense", head_dim=8, alibi_slopes=alibi_slopes(6))
    assert dense.mask.shape == (B, 1, T, T) and dense.bias.shape == (B, 6, T, T)
    lean = plan_attention(rule, impl="blockwise", head_dim=8, alibi_slopes=alibi_slopes(6))
    assert lean.mask is None and lean.bias is None and lean.alibi_slopes.shape == (6,)
    q, k, v = _qkv(s=T)
    with pytest.raises(ValueError, match="needs the dense implementation"):
        attend(q, k, v, lean, bias=jnp.zeros((B, 6, T, T)))


def test_config_validation():
    gpt2 = get_model_preset("gpt2-tiny")
    with pytest.raises(ConfigError, match="model.attention_impl='flash' is unknown"):
        dataclasses.replace(gpt2, attention_impl="flash")
    deberta = get_model_preset("deberta_v2-tiny")
    with pytest.raises(ConfigError, match="DeBERTa's disentangled relative attention"):
        dataclasses.replace(deberta, attention_impl="blockwise")
    t5 = get_model_preset("t5-tiny")
    with pytest.raises(ConfigError, match="cannot compute T5's relative position bias"):
        dataclasses.replace(t5, attention_impl="cudnn")
    for cfg in (gpt2, deberta, t5):  # auto is always allowed (dense where a bias needs it)
        assert dataclasses.replace(cfg, attention_impl="auto").attention_impl == "auto"
    assert isinstance(dataclasses.replace(deberta, attention_impl="dense"), EncoderConfig)


# ---------------------------------------------------------------------------------------------
# Models: attention_impl=blockwise gives the dense logits and loss gradients


def _random_params(module, cfg, seed=0):
    """Params drawn in numpy from the spec shapes: fan-in scaled weights, non-zero biases."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, spec in flatten(module.param_specs(cfg)).items():
        x = rng.standard_normal(spec.shape)
        if name.endswith("scale"):
            x = 1.0 + 0.1 * x
        elif name.endswith("bias") or name.split("/")[-1].startswith("b"):
            x = 0.1 * x
        else:
            fan_in = cfg.d_ff if name.endswith("w_down") else cfg.d_model
            x = 0.05 * x if name.endswith("table") else x / np.sqrt(fan_in)
        flat[name] = jnp.asarray(x, jnp.float32)
    return unflatten(flat)


def _check_model(module, cfg, batch, monkeypatch, impl="blockwise"):
    """Logits and the gradients of a mean cross-entropy agree between dense and ``impl``."""
    monkeypatch.setattr(blockwise, "DEFAULT_BLOCK", 4)  # several blocks at these lengths
    params = _random_params(module, cfg)

    def loss(params, cfg):
        logits = module.apply(params, batch, cfg=cfg)["logits"]
        targets = jnp.arange(logits[..., 0].size).reshape(logits.shape[:-1]) % cfg.vocab_size
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, targets[..., None], -1).mean(), logits

    step = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (_, ref), ref_grads = step(params, cfg)
    (_, out), grads = step(params, dataclasses.replace(cfg, attention_impl=impl))
    np.testing.assert_allclose(out, ref, **TOL)
    flat_ref, flat = flatten(ref_grads), flatten(grads)
    for name in flat_ref:
        np.testing.assert_allclose(flat[name], flat_ref[name], **TOL, err_msg=name)
    wq = next(name for name in flat_ref if name.endswith("attn/wq"))
    assert float(jnp.abs(flat_ref[wq]).max()) > 1e-4


GPT2 = get_model_preset("gpt2-tiny")
DECODERS = {  # learned positions (plain gpt2) attend as alibi_mqa does without the bias
    "rope_gqa_swa_remat": dataclasses.replace(
        GPT2, position="rope", n_kv_heads=2, sliding_window=3, norm="rmsnorm", remat=True
    ),
    "alibi_mqa": dataclasses.replace(GPT2, position="alibi", embed_norm=True, n_kv_heads=1),
}


@pytest.mark.parametrize("name", list(DECODERS))
def test_decoder_blockwise_equals_dense(name, monkeypatch):
    tokens = jax.random.randint(jax.random.key(0), (B, T), 0, GPT2.vocab_size)
    positions = jnp.array([[*range(6), *range(7)], [-1, -1, *range(11)]])
    segments = jnp.array([[1] * 6 + [2] * 7, [0, 0] + [1] * 11])
    batch = {"tokens": tokens, "positions": positions, "segment_ids": segments}
    _check_model(decoder, DECODERS[name], batch, monkeypatch)


def test_encoder_blockwise_equals_dense(monkeypatch):
    cfg = dataclasses.replace(get_model_preset("bert-tiny"), head="mlm")
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)
    segments = jnp.array([[1] * 13, [1] * 9 + [0] * 4])  # row 1 right-padded
    _check_model(encoder, cfg, {"tokens": tokens, "segment_ids": segments}, monkeypatch)


def test_seq2seq_blockwise_equals_dense(monkeypatch):
    cfg = dataclasses.replace(get_model_preset("bart-tiny"), vocab_size=64)
    keys = jax.random.split(jax.random.key(2), 2)
    batch = {
        "inputs": jax.random.randint(keys[0], (B, S), 0, 64),
        "input_mask": jnp.array([[1] * 11, [1] * 7 + [0] * 4]),
        "decoder_inputs": jax.random.randint(keys[1], (B, T), 0, 64),
        "decoder_mask": jnp.array([[1] * 13, [1] * 10 + [0] * 3]),
    }
    _check_model(seq2seq, cfg, batch, monkeypatch)


# ---------------------------------------------------------------------------------------------
# Memory: the compiled backward's temporaries grow linearly with T, the dense ones quadratically


def _backward_temp_bytes(fn, t):
    shape = jax.ShapeDtypeStruct((1, t, 4, 32), jnp.float32)
    pos = jnp.arange(t)[None]
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, MaskRule(pos, pos)))
    compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(shape, shape, shape).compile()
    stats = compiled.memory_analysis()
    if stats is None or not hasattr(stats, "temp_size_in_bytes"):
        pytest.skip("this backend reports no memory analysis")
    return stats.temp_size_in_bytes


def test_backward_memory_grows_linearly():
    lean = lambda q, k, v, r: _blockwise(q, k, v, r, block_q=128, block_k=128)
    small, large = (_backward_temp_bytes(lean, t) for t in (512, 2048))
    dense_small, dense_large = (_backward_temp_bytes(_dense, t) for t in (512, 2048))
    assert dense_large > 8 * dense_small  # the measure sees quadratic growth ...
    assert large < 4 * small  # ... and blockwise is at most linear (x4 length)
    assert large < dense_large / 20
