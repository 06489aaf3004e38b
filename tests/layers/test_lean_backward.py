"""Lean backward passes: the norms, MLP activations, MLP, weight matmuls and attention softmax
keep only what their gradient needs (their inputs, or the softmax's output), and the tied LM
head's custom gradient contracts over flattened tokens; all still differentiate exactly like the
references: ``torch.nn.functional`` autograd and ``jax.nn.dot_product_attention``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmzoo.layers import attention, heads, linear
from llmzoo.layers.mlp import activation_fn, mlp, mlp_specs
from llmzoo.layers.norms import layer_norm, rms_norm
from llmzoo.models import decoder
from llmzoo.objectives.losses import token_loss
from llmzoo.presets import get_model_preset


def _residual_bytes(f, *args) -> int:
    """Bytes of the arrays ``jax.vjp`` keeps for the backward pass of ``f(*args)``."""
    _, vjp = jax.vjp(f, *args)
    return sum(leaf.nbytes for leaf in jax.tree.leaves(vjp))


def _torch_grads(f, *arrays, cotangent):
    """Gradients of ``sum(f(*arrays) * cotangent)`` by torch autograd, float64."""
    ts = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in arrays]
    (f(*ts) * torch.tensor(np.asarray(cotangent, np.float64))).sum().backward()
    return [t.grad.numpy() for t in ts]


@pytest.fixture
def x():
    return (2 * np.random.default_rng(0).standard_normal((3, 5, 16)) + 0.5).astype(np.float32)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_gradient_matches_torch_and_keeps_only_its_inputs(x, bias):
    rng = np.random.default_rng(1)
    params = {"scale": rng.standard_normal(16).astype(np.float32)}
    if bias:
        params["bias"] = rng.standard_normal(16).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    _, vjp = jax.vjp(lambda p, x: layer_norm(p, x, eps=1e-5), params, x)
    dp, dx = vjp(g)
    ref = _torch_grads(
        lambda x, s, *b: F.layer_norm(x, (16,), s, b[0] if b else None, eps=1e-5),
        x,
        *params.values(),
        cotangent=g,
    )
    np.testing.assert_allclose(dx, ref[0], atol=1e-5)
    np.testing.assert_allclose(dp["scale"], ref[1], atol=1e-4)
    if bias:
        np.testing.assert_allclose(dp["bias"], ref[2], atol=1e-4)
    inputs = x.nbytes + sum(v.nbytes for v in params.values())
    assert _residual_bytes(lambda p, x: layer_norm(p, x), params, x) <= inputs


@pytest.mark.parametrize("zero_centered", [False, True])
def test_rms_norm_gradient_matches_torch_and_keeps_only_its_inputs(x, zero_centered):
    rng = np.random.default_rng(2)
    scale = rng.standard_normal(16).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    _, vjp = jax.vjp(
        lambda s, x: rms_norm({"scale": s}, x, eps=1e-6, zero_centered=zero_centered), scale, x
    )
    ds, dx = vjp(g)
    offset = 1.0 if zero_centered else 0.0
    ref = _torch_grads(
        lambda x, s: F.rms_norm(x, (16,), s + offset, eps=1e-6), x, scale, cotangent=g
    )
    np.testing.assert_allclose(dx, ref[0], atol=1e-5)
    np.testing.assert_allclose(ds, ref[1], atol=1e-4)
    assert _residual_bytes(lambda s, x: rms_norm({"scale": s}, x), scale, x) <= (
        x.nbytes + scale.nbytes
    )


TORCH_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


@pytest.mark.parametrize("name", sorted(TORCH_ACTIVATIONS))
def test_activation_gradient_matches_torch_and_keeps_only_its_input(x, name):
    g = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    _, vjp = jax.vjp(activation_fn(name), x)
    (dx,) = vjp(g)
    (ref,) = _torch_grads(TORCH_ACTIVATIONS[name], x, cotangent=g)
    np.testing.assert_allclose(dx, ref, atol=1e-5)
    # Differentiated directly, GELU-tanh keeps four [..., F] arrays; here only x.
    assert _residual_bytes(activation_fn(name), x) == x.nbytes


TORCH_MLPS = {
    "gelu_tanh": lambda x, p: (
        F.gelu(x @ p["w_up"] + p["b_up"], approximate="tanh") @ p["w_down"] + p["b_down"]
    ),
    "swiglu": lambda x, p: (F.silu(x @ p["w_gate"]) * (x @ p["w_up"])) @ p["w_down"],
}


@pytest.mark.parametrize("kind", sorted(TORCH_MLPS))
def test_mlp_gradient_matches_torch_and_keeps_no_activated_hidden(x, kind):
    """The MLP keeps its input, its weights and its up (and gate) projections: not the activated
    ``[..., F]`` array, which the backward pass recomputes."""
    rng = np.random.default_rng(4)
    specs = mlp_specs(16, 24, kind, bias=kind == "gelu_tanh")
    params = {k: rng.standard_normal(s.shape).astype(np.float32) for k, s in specs.items()}
    g = rng.standard_normal(x.shape).astype(np.float32)
    fn = lambda p, x: mlp(p, x, kind=kind)  # noqa: E731
    dp, dx = jax.vjp(fn, params, x)[1](g)
    names = list(params)
    ref = _torch_grads(
        lambda x, *ws: TORCH_MLPS[kind](x, dict(zip(names, ws, strict=True))),
        x,
        *params.values(),
        cotangent=g,
    )
    np.testing.assert_allclose(dx, ref[0], rtol=1e-5, atol=1e-4)
    for name, want in zip(names, ref[1:], strict=True):
        np.testing.assert_allclose(dp[name], want, rtol=1e-5, atol=1e-4, err_msg=name)
    hidden = x[..., :1].size * 24 * 4  # one [..., F] float32 array
    weights = sum(params[k].nbytes for k in ("w_up", "w_gate", "w_down") if k in params)
    projections = 2 if kind == "swiglu" else 1
    assert _residual_bytes(fn, params, x) == x.nbytes + weights + projections * hidden


def test_projections_of_one_input_keep_it_once(x):
    """Three weights applied to one ``x`` (as ``wq, wk, wv`` are) keep ``x`` once for their
    gradients, not a reshaped copy per matmul."""
    ws = [np.random.default_rng(i).standard_normal((16, 2, 4)).astype(np.float32) for i in range(3)]
    fn = lambda x, *ws: [linear.einsum("btd,dnh->btnh", x, w) for w in ws]  # noqa: E731
    assert _residual_bytes(fn, x, *ws) == x.nbytes + 3 * ws[0].nbytes


def test_tied_logits_gradients_match_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    table = rng.standard_normal((11, 8)).astype(np.float32)
    cot = rng.standard_normal((2, 3, 11)).astype(np.float32)
    out, vjp = jax.vjp(heads.tied_logits, x, table)
    ref_grads = _torch_grads(lambda x, w: x @ w.T, x, table, cotangent=cot)
    np.testing.assert_allclose(out, x @ table.T, atol=1e-5)
    for got, want in zip(vjp(cot), ref_grads, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_tied_logits_in_bfloat16_differentiate_exactly_as_autodiff():
    """bfloat16 states and table, float32 logits: the rewritten backward rounds as autodiff's."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((4, 5, 16)), jnp.bfloat16)
    table = jnp.asarray(rng.standard_normal((32, 16)), jnp.float32)
    cot = rng.standard_normal((4, 5, 32)).astype(np.float32)

    def ref(x, table):
        w = table.astype(x.dtype)
        return jnp.einsum("bte,ve->btv", x, w, preferred_element_type=jnp.float32)

    out, vjp = jax.vjp(heads.tied_logits, x, table)
    out_ref, vjp_ref = jax.vjp(ref, x, table)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, out_ref)
    for got, want in zip(vjp(cot), vjp_ref(cot), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(
            np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-6
        )


def _qkv(b, t, n, h, seed):
    rng = np.random.default_rng(seed)  # numpy: no random program to compile per shape
    q, k, v = (rng.standard_normal((b, t, n, h), np.float32) for _ in range(3))
    return q, k, v, rng.standard_normal((b, n, t, t), np.float32)


def test_attention_gradients_match_jax_nn_with_causal_padding_and_bias():
    b, t, n, h = 2, 6, 4, 8
    q, k, v, bias = _qkv(b, t, n, h, seed=0)
    lengths = jnp.array([6, 4])
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    key_pos = jnp.where(pos < lengths[:, None], pos, -1)
    mask = attention.attention_mask(pos, key_pos)

    def ours(q, k, v, bias):
        return attention.dot_product_attention(q, k, v, mask=mask, bias=bias)

    def ref(q, k, v, bias):
        return jax.nn.dot_product_attention(
            q, k, v, bias=bias, is_causal=True, key_value_seq_lengths=lengths
        )

    cot = np.random.default_rng(9).standard_normal((b, t, n, h), np.float32)
    out, vjp = jax.vjp(ours, q, k, v, bias)
    out_ref, vjp_ref = jax.vjp(ref, q, k, v, bias)
    np.testing.assert_allclose(out, out_ref, atol=1e-5)
    for got, want in zip(vjp(cot), vjp_ref(cot), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_masked_softmax_gradient_is_zero_where_masked_and_keeps_only_the_probabilities():
    b, t, n, h = 1, 5, 2, 4
    q, k, _, _ = _qkv(b, t, n, h, seed=1)
    allowed = np.tril(np.ones((t, t), bool))
    allowed[2] = False  # query 2 sees no key: its row is 0 and so is its gradient
    mask = jnp.asarray(allowed)[None, None]
    probs, vjp = jax.vjp(lambda q, k: attention.attention_weights(q, k, mask=mask), q, k)
    assert np.all(np.asarray(probs)[:, :, 2] == 0)
    np.testing.assert_allclose(np.asarray(probs).sum(-1)[:, :, allowed.any(-1)], 1, atol=1e-6)
    g = np.random.default_rng(2).standard_normal(probs.shape, np.float32)
    dq, dk = vjp(g)
    assert np.all(np.asarray(dq)[:, 2] == 0)

    # The plain autodiff of the same formula agrees.
    def plain(q, k):
        logits = jnp.einsum("btnh,bsnh->bnts", q, k) * h**-0.5
        p = jax.nn.softmax(jnp.where(mask, logits, -1e30), axis=-1)
        return jnp.where(mask.any(-1, keepdims=True), p, 0.0)

    for got, want in zip((dq, dk), jax.vjp(plain, q, k)[1](g), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    logits = jnp.asarray(np.random.default_rng(3).standard_normal((b, n, t, t), np.float32))
    lean = _residual_bytes(lambda x: attention._softmax(x, mask), logits)
    assert lean == logits.nbytes  # the probabilities alone
    assert _residual_bytes(lambda x: attention._softmax(x, None), logits) == logits.nbytes


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_decoder_gradient_without_remat_keeps_little_more_than_dots_saveable(preset):
    """XLA's temporary buffers of a decoder's gradient (mostly the activations kept for the
    backward pass): with ``remat=none`` within 1.4x of ``dots_saveable``, which keeps only the
    matmul outputs. Autodiff of the plain norms, GELU and softmax measured 1.8-1.9x here (and
    1279 against 694 MiB at the benchmark's size; ``benchmarks/train_step.py``)."""
    cfg = dataclasses.replace(
        get_model_preset(preset), vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=256
    )
    cfg = dataclasses.replace(cfg, n_kv_heads=4 if cfg.n_kv_heads else None, max_seq_len=128)
    tokens = jax.ShapeDtypeStruct((4, 128), jnp.int32)
    batch = {"tokens": tokens, "targets": tokens, "loss_mask": jnp.ones((4, 128))}
    params = jax.eval_shape(lambda: decoder.init(jax.random.key(0), cfg))

    def temp_bytes(remat):
        c = dataclasses.replace(cfg, remat=remat)
        grad = jax.jit(jax.grad(lambda p, b: token_loss(p, b, None, cfg=c)[0]))
        return grad.lower(params, batch).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes("none") < 1.4 * temp_bytes("dots_saveable")


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_no_batch_dims_policy_keeps_no_attention_scores(preset):
    """``dots_with_no_batch_dims_saveable`` keeps the weight matmuls' outputs but none of
    attention's ``[B, N, T, S]`` arrays, which ``dots_saveable`` keeps (the scores), and fewer
    bytes in all."""
    t = 48  # no other dim of the model is 48
    cfg = dataclasses.replace(
        get_model_preset(preset), vocab_size=256, d_model=32, n_layers=2, n_heads=4, d_ff=64
    )
    cfg = dataclasses.replace(cfg, n_kv_heads=2 if cfg.n_kv_heads else None, max_seq_len=t)
    toks = np.random.default_rng(0).integers(0, 256, (2, t)).astype(np.int32)
    batch = {"tokens": toks, "targets": toks, "loss_mask": np.ones((2, t), np.float32)}
    params = decoder.init(jax.random.key(0), cfg)

    def residuals(remat):
        c = dataclasses.replace(cfg, remat=remat)
        _, vjp = jax.vjp(lambda p: token_loss(p, batch, None, cfg=c)[0], params)
        return [leaf for leaf in jax.tree.leaves(vjp) if hasattr(leaf, "shape")]

    def scores(leaves):  # per-head [T, S] arrays, in any layout (not the [B, 1, T, S] mask)
        return [x.shape for x in leaves if x.shape.count(t) == 2 and x.size > 2 * t * t]

    assert scores(residuals("dots_saveable"))
    lean = residuals("dots_with_no_batch_dims_saveable")
    assert not scores(lean), scores(lean)
    nbytes = lambda leaves: sum(x.nbytes for x in leaves)  # noqa: E731
    assert nbytes(lean) < nbytes(residuals("dots_saveable"))
