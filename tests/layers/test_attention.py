"""Attention: dot_product_attention against jax.nn.dot_product_attention and a numpy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.layers.attention import (
    attention_mask,
    attention_specs,
    dot_product_attention,
    fuse_qkv,
    out_projection,
    qkv_projection,
    update_kv_cache,
)
from llmzoo.layers.quant import quantize

# Jitted wrappers: one compile per test instead of one per primitive (keeps the suite fast).
_attn = jax.jit(dot_product_attention, static_argnames=("scale",))
_mask = jax.jit(attention_mask, static_argnames=("causal", "window"))
_jnn = jax.jit(
    jax.nn.dot_product_attention,
    static_argnames=("scale", "is_causal", "local_window_size", "implementation"),
)


def _qkv(b, t, s, n, k, h, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, n, h)).astype(np.float32)
    kk = rng.standard_normal((b, s, k, h)).astype(np.float32)
    v = rng.standard_normal((b, s, k, h)).astype(np.float32)
    return q, kk, v


def _numpy_attention(q, k, v, allowed, bias=None, scale=None):
    """Explicit per-head loop; kv head for query head n is n // (N / K) (HF repeat_interleave)."""
    b, t, n, h = q.shape
    g = n // k.shape[2]
    scale = h**-0.5 if scale is None else scale
    out = np.zeros((b, t, n, h), np.float64)
    for bi in range(b):
        for ni in range(n):
            kh = ni // g
            logits = (q[bi, :, ni].astype(np.float64) @ k[bi, :, kh].T.astype(np.float64)) * scale
            if bias is not None:
                logits = logits + bias[bi, ni]
            logits = np.where(allowed[bi], logits, -np.inf)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p = p / p.sum(-1, keepdims=True)
            out[bi, :, ni] = p @ v[bi, :, kh]
    return out


def _positions(b, t):
    return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))


@pytest.mark.parametrize("n,k", [(4, 4), (4, 1), (6, 2)], ids=["mha", "mqa", "gqa"])
def test_causal_matches_jax_nn(n, k):
    b, t, h = 2, 7, 8
    q, kk, v = _qkv(b, t, t, n, k, h)
    pos = _positions(b, t)
    ours = _attn(q, kk, v, mask=_mask(pos, pos))
    ref = _jnn(q, kk, v, is_causal=True, implementation="xla")
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    allowed = np.tril(np.ones((t, t), bool))[None].repeat(b, 0)
    np.testing.assert_allclose(ours, _numpy_attention(q, kk, v, allowed), atol=1e-5)


@pytest.mark.parametrize("n,k", [(4, 4), (4, 1), (4, 2)], ids=["mha", "mqa", "gqa"])
def test_padding_matches_kv_seq_lengths(n, k):
    b, t, h = 2, 5, 8
    lengths = np.array([5, 3])
    q, kk, v = _qkv(b, t, t, n, k, h, seed=1)
    k_pos = np.where(np.arange(t)[None] < lengths[:, None], np.arange(t)[None], -1)
    mask = _mask(_positions(b, t), jnp.asarray(k_pos), causal=False)
    ours = _attn(q, kk, v, mask=mask)
    ref = _jnn(q, kk, v, key_value_seq_lengths=jnp.asarray(lengths), implementation="xla")
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # padded keys get exactly zero weight: changing their values changes nothing
    v2 = v.copy()
    v2[1, 3:] = 100.0
    np.testing.assert_allclose(_attn(q, kk, v2, mask=mask), ours, atol=1e-6)


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("n,k", [(4, 4), (4, 2)], ids=["mha", "gqa"])
def test_sliding_window_matches_local_window(window, n, k):
    b, t, h = 1, 9, 4
    q, kk, v = _qkv(b, t, t, n, k, h, seed=2)
    pos = _positions(b, t)
    ours = _attn(q, kk, v, mask=_mask(pos, pos, window=window))
    ref = _jnn(q, kk, v, is_causal=True, local_window_size=(window - 1, 0), implementation="xla")
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    i, j = np.arange(t)[:, None], np.arange(t)[None]
    allowed = ((j <= i) & (i - j < window))[None]
    np.testing.assert_allclose(ours, _numpy_attention(q, kk, v, allowed), atol=1e-5)


def test_bias_and_scale_match_jax_nn():
    b, t, n, k, h = 2, 6, 4, 2, 8
    q, kk, v = _qkv(b, t, t, n, k, h, seed=3)
    bias = np.random.default_rng(4).standard_normal((b, n, t, t)).astype(np.float32)
    pos = _positions(b, t)
    ours = _attn(q, kk, v, mask=_mask(pos, pos), bias=bias, scale=0.3)
    ref = _jnn(q, kk, v, bias=bias, is_causal=True, scale=0.3, implementation="xla")
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    allowed = np.tril(np.ones((t, t), bool))[None].repeat(b, 0)
    ref_np = _numpy_attention(q, kk, v, allowed, bias=bias, scale=0.3)
    np.testing.assert_allclose(ours, ref_np, atol=1e-5)


def test_cross_length_and_bf16_dtype():
    # T != S (decoding against a longer cache); output dtype follows q.
    b, t, s, n, k, h = 1, 2, 5, 2, 1, 4
    q, kk, v = _qkv(b, t, s, n, k, h, seed=5)
    q_pos = jnp.array([[3, 4]])
    k_pos = jnp.arange(s)[None]
    ours = _attn(q, kk, v, mask=_mask(q_pos, k_pos))
    allowed = (np.arange(s)[None] <= np.array([3, 4])[:, None])[None]
    np.testing.assert_allclose(ours, _numpy_attention(q, kk, v, allowed), atol=1e-5)
    out16 = _attn(q.astype(jnp.bfloat16), kk.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
    assert out16.dtype == jnp.bfloat16


def test_attention_mask_causal_window_padding_exact():
    q_pos = jnp.array([[0, 1, 2, 3]])
    k_pos = jnp.array([[-1, 1, 2, 3]])  # slot 0 is empty
    m = np.asarray(_mask(q_pos, k_pos, window=2))[0, 0]
    expected = np.array(
        [
            [0, 0, 0, 0],
            [0, 1, 0, 0],
            [0, 1, 1, 0],
            [0, 0, 1, 1],
        ],
        bool,
    )
    np.testing.assert_array_equal(m, expected)
    assert _mask(q_pos, k_pos).shape == (1, 1, 4, 4)


def test_attention_mask_packed_segments():
    # Two documents packed into one row, positions restarting at the boundary.
    seg = jnp.array([[1, 1, 1, 2, 2, 0]])  # 0 = trailing padding
    pos = jnp.array([[0, 1, 2, 0, 1, -1]])
    m = np.asarray(_mask(pos, pos, q_segment=seg, k_segment=seg))[0, 0]
    s = np.asarray(seg[0])
    for i in range(6):
        for j in range(6):
            if s[i] != s[j]:
                assert not m[i, j], (i, j)  # never across a segment boundary
    expected = np.zeros((6, 6), bool)
    expected[0, 0] = True
    expected[1, :2] = True
    expected[2, :3] = True
    expected[3, 3] = True
    expected[4, 3:5] = True
    np.testing.assert_array_equal(m, expected)


def test_packed_attention_equals_separate_documents():
    n, h = 2, 4
    q, kk, v = _qkv(1, 5, 5, n, n, h, seed=6)
    seg = jnp.array([[1, 1, 1, 2, 2]])
    pos = jnp.array([[0, 1, 2, 0, 1]])
    packed = _attn(q, kk, v, mask=_mask(pos, pos, q_segment=seg, k_segment=seg))
    for sl in (slice(0, 3), slice(3, 5)):
        p = pos[:, sl]
        alone = _attn(q[:, sl], kk[:, sl], v[:, sl], mask=_mask(p, p))
        np.testing.assert_allclose(packed[:, sl], alone, atol=1e-6)


def test_update_kv_cache_writes_slots():
    b, s, k, h = 2, 8, 2, 3
    cache_k = jnp.full((b, s, k, h), -7.0, jnp.bfloat16)
    cache_v = jnp.full((b, s, k, h), -9.0, jnp.bfloat16)
    new_k = jnp.ones((b, 2, k, h), jnp.float32) * jnp.arange(1, 3)[None, :, None, None]
    new_v = -new_k
    ck, cv = jax.jit(update_kv_cache)(cache_k, cache_v, new_k, new_v, jnp.int32(3))
    assert ck.dtype == jnp.bfloat16 and ck.shape == cache_k.shape
    ck, cv = np.asarray(ck, np.float32), np.asarray(cv, np.float32)
    np.testing.assert_array_equal(ck[:, 3], 1.0)
    np.testing.assert_array_equal(ck[:, 4], 2.0)
    np.testing.assert_array_equal(cv[:, 3:5], -np.asarray(new_k))
    untouched = np.r_[0:3, 5:8]
    np.testing.assert_array_equal(ck[:, untouched], -7.0)
    np.testing.assert_array_equal(cv[:, untouched], -9.0)


def test_projections_match_numpy():
    d, n, k, h = 6, 4, 2, 3
    specs = attention_specs(d, n, k, h, qkv_bias=True, out_bias=True)
    assert specs["wq"].shape == (d, n, h) and specs["wk"].shape == (d, k, h)
    assert specs["wo"].shape == (n, h, d) and specs["bv"].shape == (k, h)
    rng = np.random.default_rng(7)
    params = {name: rng.standard_normal(p.shape).astype(np.float32) for name, p in specs.items()}
    x = rng.standard_normal((2, 5, d)).astype(np.float32)
    q, kk, v = jax.jit(qkv_projection)(params, jnp.asarray(x))
    assert q.shape == (2, 5, n, h) and kk.shape == (2, 5, k, h)
    ref_q = np.tensordot(x, params["wq"], axes=([2], [0])) + params["bq"]
    ref_v = np.tensordot(x, params["wv"], axes=([2], [0])) + params["bv"]
    np.testing.assert_allclose(q, ref_q, atol=1e-5)
    np.testing.assert_allclose(v, ref_v, atol=1e-5)
    o = rng.standard_normal((2, 5, n, h)).astype(np.float32)
    ref_o = o.reshape(2, 5, n * h) @ params["wo"].reshape(n * h, d) + params["bo"]
    np.testing.assert_allclose(jax.jit(out_projection)(params, jnp.asarray(o)), ref_o, atol=1e-5)


def test_attention_specs_rejects_bad_grouping():
    with pytest.raises(ValueError, match="n_kv_heads=3"):
        attention_specs(8, 4, 3, 2)


@pytest.mark.parametrize("n, kh, bias", [(6, 2, False), (4, 4, True), (4, 1, True)])
def test_fused_qkv_projects_as_the_three_matrices(n, kh, bias):
    """``fuse_qkv`` keeps each query head with its KV head's group: the same q, k, v (GQA, MHA,
    MQA, with biases), and quantized weights stay unfused."""
    d, h = 16, 8
    params = attention_specs(d, n, kh, h, qkv_bias=bias)
    rng = np.random.default_rng(0)
    params = {k: jnp.asarray(rng.standard_normal(s.shape, np.float32)) for k, s in params.items()}
    x = rng.standard_normal((2, 3, d), np.float32)
    fused = fuse_qkv(params)
    assert "wq" not in fused and fused["wqkv"].shape == (d, kh, n // kh + 2, h)
    for got, want in zip(qkv_projection(fused, x), qkv_projection(params, x), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    quantized = params | {"wq": quantize(params["wq"], bits=8)}
    assert fuse_qkv(quantized) is quantized
