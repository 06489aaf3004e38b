"""Activation capture and patching in the decoder kind (``apply(..., capture=, patch=)``).

Captured attention probabilities are checked against a NumPy computation from the params and the
captured residual stream (layer norm, projections, ALiBi bias and masks written out by hand).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.errors import ConfigError
from llmzoo.models import capture as capture_lib
from llmzoo.models import decoder
from tests.models.test_decoder import CONFIGS, _random_params, _tokens

ALL = capture_lib.DECODER
B, T = 2, 8
_apply = jax.jit(decoder.apply, static_argnames=("cfg", "capture"))
_patched = jax.jit(decoder.apply, static_argnames=("cfg",))


@pytest.fixture(scope="module")
def params():
    return {name: _random_params(cfg, seed=1) for name, cfg in CONFIGS.items()}


def _batch(seed=0, padded=True):
    """Two rows; with ``padded`` the second row's last 3 tokens are padding (segment 0)."""
    segment_ids = np.ones((B, T), np.int32)
    if padded:
        segment_ids[1, -3:] = 0
    return {"tokens": _tokens((B, T), seed), "segment_ids": jnp.asarray(segment_ids)}


def _np_norm(p, x, cfg):
    x = np.asarray(x, np.float64)
    if cfg.norm == "rmsnorm":
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + cfg.norm_eps) * np.asarray(p["scale"])
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + cfg.norm_eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _allowed(segment_ids, window=None):
    """``[B, T, S]`` bool: causal, same segment (padding, segment 0, sees only padding), within
    the window."""
    seg = np.asarray(segment_ids)
    t = np.arange(T)
    allowed = (t[None, :] <= t[:, None])[None] & (seg[:, :, None] == seg[:, None, :])
    if window is not None:
        allowed &= (t[:, None] - t[None, :] < window)[None]
    return allowed


def _reference_probs(p, x, cfg, segment_ids):
    """NumPy attention probabilities ``[B, N, T, S]`` of one block (no RoPE) from its input."""
    h = _np_norm(p["attn_norm"], x, cfg)
    a = {k: np.asarray(v, np.float64) for k, v in p["attn"].items()}
    q = np.einsum("btd,dnh->btnh", h, a["wq"]) + a.get("bq", 0)
    k = np.einsum("btd,dkh->btkh", h, a["wk"]) + a.get("bk", 0)
    k = np.repeat(k, cfg.n_heads // cfg.kv_heads, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(cfg.dim_per_head)
    if cfg.position == "alibi":  # power-of-two N: slope_i = 2^(-8 (i + 1) / N)
        slopes = 2.0 ** (-8.0 * np.arange(1, cfg.n_heads + 1) / cfg.n_heads)
        offset = np.arange(T)[:, None] - np.arange(T)[None, :]
        logits = logits - slopes[:, None, None] * offset
    allowed = _allowed(segment_ids)[:, None]
    logits = np.where(allowed, logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _layer(p, i):
    return jax.tree.map(lambda a: a[i], p["layers"])


@pytest.mark.parametrize("name", ["gpt2", "rope_gqa_swa"])
def test_nothing_requested_is_the_same_program(params, name):
    cfg, p, batch = CONFIGS[name], params[name], _batch()
    plain = jax.jit(lambda p, b: decoder.apply(p, b, cfg=cfg)).lower(p, batch).as_text()
    empty = jax.jit(lambda p, b: decoder.apply(p, b, cfg=cfg, capture=())).lower(p, batch)
    assert empty.as_text() == plain
    assert "captured" not in _apply(p, batch, cfg=cfg, capture=())
    out = _apply(p, batch, cfg=cfg, capture=ALL)
    np.testing.assert_array_equal(out["logits"], _apply(p, batch, cfg=cfg)["logits"])


@pytest.mark.parametrize("name", ["gpt2", "alibi_mqa"])
def test_attention_probs_equal_a_numpy_reference(params, name):
    cfg, p, batch = CONFIGS[name], params[name], _batch()
    got = _apply(p, batch, cfg=cfg, capture=("attn_probs", "residual"))["captured"]
    assert got["attn_probs"].shape == (cfg.n_layers, B, cfg.n_heads, T, T)
    assert got["residual"].shape == (cfg.n_layers + 1, B, T, cfg.d_model)
    for i in range(cfg.n_layers):
        want = _reference_probs(_layer(p, i), got["residual"][i], cfg, batch["segment_ids"])
        np.testing.assert_allclose(got["attn_probs"][i], want, atol=1e-5)


def test_probs_are_the_same_for_every_impl_and_weight_the_values(params):
    """RoPE + GQA + sliding window: dense and blockwise capture the same probabilities; rows sum
    to 1 over the allowed keys and are 0 elsewhere; each head's output is ``probs @ v``."""
    cfg, p, batch = CONFIGS["rope_gqa_swa"], params["rope_gqa_swa"], _batch()
    outs = {
        impl: _apply(p, batch, cfg=dataclasses.replace(cfg, attention_impl=impl), capture=ALL)
        for impl in ("dense", "blockwise")
    }
    dense, block = outs["dense"]["captured"], outs["blockwise"]["captured"]
    np.testing.assert_allclose(block["attn_probs"], dense["attn_probs"], atol=1e-6)
    probs = np.asarray(dense["attn_probs"])
    allowed = _allowed(batch["segment_ids"], cfg.sliding_window)[None, :, None]
    assert np.all(probs[~np.broadcast_to(allowed, probs.shape)] == 0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    for i in range(cfg.n_layers):
        a = _layer(p, i)
        h = _np_norm(a["attn_norm"], dense["residual"][i], cfg)
        v = np.einsum("btd,dkh->btkh", h, np.asarray(a["attn"]["wv"], np.float64))
        v = np.repeat(v, cfg.n_heads // cfg.kv_heads, axis=2)
        want = np.einsum("bnts,bsnh->btnh", probs[i], v)
        np.testing.assert_allclose(dense["head_out"][i], want, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "alibi_mqa"])
def test_residual_stream_adds_up_to_the_logits(params, name):
    cfg, p, batch = CONFIGS[name], params[name], _batch(padded=False)
    out = _apply(p, batch, cfg=cfg, capture=ALL)
    c = out["captured"]
    np.testing.assert_allclose(
        c["residual"][1:], c["residual"][:-1] + c["attn_out"] + c["mlp_out"], atol=1e-5
    )
    h = _np_norm(p["final_norm"], c["residual"][-1], cfg)
    head = p["embed"]["table"].T if cfg.tie_embeddings else p["lm_head"]["w"]
    np.testing.assert_allclose(h @ np.asarray(head, np.float64), out["logits"], atol=1e-4)
    hidden = jax.jit(decoder.apply, static_argnames=("cfg", "return_hidden"))(
        p, batch, cfg=cfg, return_hidden=True
    )["hidden"]
    np.testing.assert_array_equal(hidden, c["residual"][1:])


def test_patching_replaces_activations(params):
    cfg, p = CONFIGS["gpt2"], params["gpt2"]
    clean, corrupt = _batch(0, padded=False), _batch(1, padded=False)
    c_out = _apply(p, clean, cfg=cfg, capture=ALL)
    x_out = _apply(p, corrupt, cfg=cfg)
    res = c_out["captured"]["residual"]
    # Every residual row patched from the clean run: the corrupt input gives the clean logits.
    everywhere = jnp.ones(res.shape[:3], bool)
    patched = _patched(p, corrupt, cfg=cfg, patch={"residual": (res, everywhere)})
    np.testing.assert_allclose(patched["logits"], c_out["logits"], atol=1e-5)
    # Nothing selected: the corrupt logits, exactly.
    none = _patched(p, corrupt, cfg=cfg, patch={"residual": (res, ~everywhere)})
    np.testing.assert_array_equal(none["logits"], x_out["logits"])
    # One head at one position of the last layer: only that position's logits move.
    heads = c_out["captured"]["head_out"]
    where = np.zeros(heads.shape[:4], bool)
    where[-1, :, 5, 0] = True
    one = _patched(p, corrupt, cfg=cfg, patch={"head_out": (heads, jnp.asarray(where))})
    moved = np.abs(np.asarray(one["logits"]) - np.asarray(x_out["logits"])).max(-1)  # [B, T]
    assert np.all(moved[:, 5] > 1e-4) and np.all(np.delete(moved, 5, axis=1) < 1e-6)


def test_bad_names_are_one_line_errors(params):
    cfg, p, batch = CONFIGS["gpt2"], params["gpt2"], _batch()
    with pytest.raises(ConfigError, match="decoder cannot capture 'state'; it can capture attn"):
        decoder.apply(p, batch, cfg=cfg, capture=("state",))
    with pytest.raises(ConfigError, match="cannot patch 'attn_probs'"):
        decoder.apply(p, batch, cfg=cfg, patch={"attn_probs": (None, None)})
    with pytest.raises(ConfigError, match="no attention, so it has no 'attn_probs'"):
        capture_lib.check_capture("rnn", ("attn_probs",), None, capture_lib.RECURRENT)
