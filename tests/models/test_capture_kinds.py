"""Activation capture and patching in the encoder and seq2seq kinds (the recurrent kinds:
``test_capture_recurrent.py``; the decoder: ``test_capture.py``).

Captured attention probabilities are checked against NumPy (projections, norms, masks, softmax
written out; T5's and DeBERTa's position biases from the layers' own functions). Params are
drawn in numpy from the spec shapes, so no config compiles an init.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.layers import disentangled, positional
from llmzoo.models import capture as capture_lib
from llmzoo.models import encoder, seq2seq
from llmzoo.params import flatten, unflatten
from llmzoo.presets import get_model_preset

B, T, S = 2, 8, 6
ENC = {
    "bert": get_model_preset("bert-tiny"),
    "albert": get_model_preset("albert-tiny"),
    "deberta": dataclasses.replace(
        get_model_preset("deberta_v2-tiny"), position_buckets=8, max_relative_positions=16
    ),
    "longformer": dataclasses.replace(get_model_preset("longformer-tiny"), attention_window=4),
}
S2S = {
    "t5": dataclasses.replace(
        get_model_preset("t5-tiny"), vocab_size=64, relative_buckets=8, relative_max_distance=10
    ),
    "bart": dataclasses.replace(get_model_preset("bart-tiny"), vocab_size=64, max_seq_len=32),
}
STATIC = ("cfg", "capture")


def _params(module, cfg, seed=0):
    """Matrices N(0, 1 / fan_in), norm scales near 1, vectors N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, spec in flatten(module.param_specs(cfg)).items():
        x = rng.standard_normal(spec.shape)
        fan_in = np.prod(spec.shape[:2]) if name.endswith("wo") else spec.shape[0]
        if name.endswith("scale"):
            x = 1.0 + 0.1 * x
        else:
            x = x / np.sqrt(fan_in) if len(spec.shape) > 1 else 0.1 * x
        flat[name] = jnp.asarray(x, jnp.float32)
    return unflatten(flat)


_RUNS: dict = {}


def _run(kind, name, make):
    """``make()`` once per config in this module: runs shared between tests."""
    if (kind, name) not in _RUNS:
        _RUNS[kind, name] = make()
    return _RUNS[kind, name]


def _tokens(seed, shape=(B, T), vocab=64):
    return jax.random.randint(jax.random.key(seed), shape, 3, vocab)


def _mask(length, pad):
    """``[B, length]`` int32 ones, with row 1's last ``pad`` entries 0 (padding)."""
    return jnp.ones((B, length), jnp.int32).at[1, length - pad :].set(0)


def _f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _layer(layers, i):
    return _f64(jax.tree.map(lambda a: a[i], layers))


def _ln(p, x, eps):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _rms(p, x, eps):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * p["scale"]


def _proj(a, x, w, b):
    return np.einsum("btd,dnh->btnh", x, a[w]) + a.get(b, 0.0)


def _softmax(logits, allowed):
    """Softmax over the last axis where ``allowed``; rows with no allowed key are 0."""
    logits = np.where(allowed, logits, -np.inf)
    top = np.max(logits, -1, keepdims=True)
    e = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    total = e.sum(-1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)


def _same_program(fn, params, batch, cfg):
    plain = jax.jit(lambda p, b: fn(p, b, cfg=cfg)).lower(params, batch).as_text()
    empty = jax.jit(lambda p, b: fn(p, b, cfg=cfg, capture=())).lower(params, batch).as_text()
    return plain == empty


# ---------------------------------------------------------------------------------------------
# encoder

_enc = jax.jit(encoder.apply, static_argnames=STATIC)


def _enc_batch(name, seed=0):
    batch = {"tokens": _tokens(seed, vocab=512), "segment_ids": _mask(T, 3)}
    if name == "longformer":  # token 0 of each row is global
        batch["global_mask"] = jnp.zeros((B, T), jnp.int32).at[:, 0].set(1)
    return batch


ENCODER = capture_lib.ENCODER


def _enc_run(name):
    """``(params, batch, outputs with every capture)`` of encoder config ``name``."""

    def make():
        p, batch = _params(encoder, ENC[name]), _enc_batch(name)
        return p, batch, _enc(p, batch, cfg=ENC[name], capture=ENCODER)

    return _run("encoder", name, make)


def _enc_reference(name, params, p, x, segment_ids):
    """NumPy probabilities ``[B, N, T, T]`` of one encoder layer (params ``p``) from its input
    ``x``; DeBERTa's relative table comes from the model's ``params``."""
    cfg, a, seg = ENC[name], p["attn"], np.asarray(segment_ids)
    q, k = _proj(a, x, "wq", "bq"), _proj(a, x, "wk", "bk")
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)  # [B, T, S]
    scale = cfg.dim_per_head**-0.5
    logits = np.einsum("btnh,bsnh->bnts", q, k)
    if name == "deberta":
        scale = disentangled.disentangled_scale(cfg.dim_per_head, cfg.pos_att_type)
        pos = jnp.broadcast_to(jnp.arange(T), (B, T))
        index = disentangled.relative_index(
            pos, pos, span=cfg.relative_span, bucket_size=cfg.position_buckets, max_position=16
        )
        table = _ln(_f64(params["rel_norm"]), _f64(params["rel_embed"]["table"]), cfg.norm_eps)
        proj = jax.tree.map(jnp.asarray, a if cfg.share_att_key else p["pos_proj"])
        rel = disentangled.project_relative(proj, jnp.asarray(table), cfg.pos_att_type)
        logits = logits + np.asarray(disentangled.disentangled_bias(q, k, *rel, index))
    if name != "longformer":
        return _softmax(logits * scale, allowed[:, None])
    t = np.arange(T)
    near = np.abs(t[:, None] - t[None, :]) <= cfg.attention_window // 2
    is_global = t == 0
    local = allowed & ((near & ~is_global[None, :]) | is_global[None, :])
    probs = _softmax(logits * scale, local[:, None])
    g = p["global_attn"]
    qg, kg = _proj(g, x, "wq", "bq"), _proj(g, x, "wk", "bk")
    pg = _softmax(np.einsum("btnh,bsnh->bnts", qg, kg) * scale, allowed[:, None])
    return np.where(is_global[None, None, :, None], pg, probs)


@pytest.mark.parametrize("name", list(ENC))
def test_encoder_captures(name):
    """Nothing requested: the same program; everything requested: the same outputs, and
    probabilities that equal NumPy's and sum to 1 over the real keys (0 for padding queries);
    the residual stream, sublayer and head outputs add up as the post-LN block does."""
    cfg = ENC[name]
    p, batch, out = _enc_run(name)
    assert _same_program(encoder.apply, p, batch, cfg)
    if name == "bert":
        plain = _enc(p, batch, cfg=cfg)
        assert "captured" not in plain
        np.testing.assert_array_equal(out["hidden"], plain["hidden"])
    c = out["captured"]
    n, h = cfg.n_heads, cfg.dim_per_head
    assert c["attn_probs"].shape == (cfg.n_layers, B, n, T, T)
    assert c["residual"].shape == (cfg.n_layers + 1, B, T, cfg.d_model)
    assert c["head_out"].shape == (cfg.n_layers, B, T, n, h)
    np.testing.assert_array_equal(c["residual"][-1], out["hidden"])
    sums = np.asarray(c["attn_probs"]).sum(-1)  # [L, B, N, T]
    np.testing.assert_allclose(sums[:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(sums[:, 1, :, : T - 3], 1.0, atol=1e-5)
    assert np.all(sums[:, 1, :, T - 3 :] == 0)
    layers = p["layers"]
    for i in range(cfg.n_layers):
        lp = _f64(layers) if cfg.share_layers else _layer(layers, i)
        x = np.asarray(c["residual"][i], np.float64)
        want = _enc_reference(name, p, lp, x, batch["segment_ids"])
        np.testing.assert_allclose(c["attn_probs"][i], want, atol=2e-5)
        # Post-LN block: LN(LN(x + attn_out) + mlp_out); attn_out = head_out @ wo + bo.
        a = lp["attn"]
        heads = np.einsum("btnh,nhd->btd", np.asarray(c["head_out"][i], np.float64), a["wo"])
        np.testing.assert_allclose(c["attn_out"][i], heads + a["bo"], rtol=1e-5, atol=1e-5)
        mid = _ln(lp["attn_norm"], x + np.asarray(c["attn_out"][i]), cfg.norm_eps)
        after = _ln(lp["mlp_norm"], mid + np.asarray(c["mlp_out"][i]), cfg.norm_eps)
        np.testing.assert_allclose(c["residual"][i + 1], after, rtol=1e-5, atol=1e-5)


def test_encoder_patching():
    """Block 0's output patched from another input, everywhere: that input's outputs."""
    cfg = ENC["bert"]
    p, batch, out = _enc_run("bert")
    other = _enc(p, _enc_batch("bert", 1), cfg=cfg, capture=ENCODER)
    res = other["captured"]["residual"]
    where = jnp.zeros(res.shape[:3], bool).at[1].set(True)
    patched = _enc(p, batch, cfg=cfg, patch={"residual": (res, where)})
    np.testing.assert_allclose(patched["hidden"], other["hidden"], atol=1e-5)
    assert np.abs(np.asarray(patched["hidden"]) - np.asarray(out["hidden"])).max() > 1e-2


# ---------------------------------------------------------------------------------------------
# seq2seq

_s2s = jax.jit(seq2seq.apply, static_argnames=STATIC)
SEQ2SEQ = capture_lib.SEQ2SEQ


def _s2s_batch(seed=0):
    return {
        "inputs": _tokens(seed, (B, S)),
        "input_mask": _mask(S, 2),
        "decoder_inputs": _tokens(seed + 10),
        "decoder_mask": _mask(T, 2),
    }


def _s2s_run(name):
    def make():
        p, batch = _params(seq2seq, S2S[name]), _s2s_batch()
        return p, batch, _s2s(p, batch, cfg=S2S[name], capture=SEQ2SEQ)

    return _run("seq2seq", name, make)


@pytest.mark.parametrize("name", list(S2S))
def test_seq2seq_captures(name):
    """As the encoder's, for all five attention and residual captures; T5 against NumPy."""
    cfg = S2S[name]
    p, batch, out = _s2s_run(name)
    assert _same_program(seq2seq.apply, p, batch, cfg)
    if name == "t5":
        np.testing.assert_array_equal(out["logits"], _s2s(p, batch, cfg=cfg)["logits"])
    c = out["captured"]
    n, le, ld = cfg.n_heads, cfg.n_encoder_layers, cfg.n_decoder_layers
    assert c["attn_probs"].shape == (ld, B, n, T, T)
    assert c["cross_attn_probs"].shape == (ld, B, n, T, S)
    assert c["encoder_attn_probs"].shape == (le, B, n, S, S)
    assert c["encoder_residual"].shape == (le + 1, B, S, cfg.d_model)
    assert c["residual"].shape == (ld + 1, B, T, cfg.d_model)
    # Row 1 ends in padding (2 tokens of each side, segment 0): the real tokens never see it.
    real = {"attn_probs": (T - 2, T - 2), "cross_attn_probs": (T, S - 2)}
    real["encoder_attn_probs"] = (S - 2, S - 2)
    for key, (queries, keys) in real.items():
        probs = np.asarray(c[key])
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        assert np.all(probs[:, 1, :, :queries, keys:] == 0)
    if name == "t5":
        _check_t5(p, batch, out, cfg)


def _t5_probs(p, table, x, kx, allowed, causal, cfg):
    """NumPy T5 attention probabilities (no scaling) plus the layer's relative bias."""
    q, k = _proj(p, x, "wq", "bq"), _proj(p, kx, "wk", "bk")
    logits = np.einsum("btnh,bsnh->bnts", q, k)
    if table is not None:
        pos = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
        bias = positional.t5_bias(
            table, pos, pos, bidirectional=not causal, max_distance=cfg.relative_max_distance
        )
        logits = logits + np.asarray(bias)
    return _softmax(logits, allowed[:, None])


def _check_t5(p, batch, out, cfg):
    """T5 (pre-norm RMSNorm, relative bias, no logit scale): every layer's self-, cross- and
    encoder attention from the captured streams; logits from the last residual row."""
    c, eps = out["captured"], cfg.norm_eps
    src, tgt = np.asarray(batch["input_mask"]), np.asarray(batch["decoder_mask"])
    enc_allowed = src[:, :, None] == src[:, None, :]  # padding queries see the padding
    t = np.arange(T)
    dec_allowed = (t[None, :] <= t[:, None])[None] & (tgt[:, :, None] == tgt[:, None, :])
    cross_allowed = np.broadcast_to(src[:, None, :] != 0, (B, T, S))
    enc_table, dec_table = (p[k]["relative_bias"]["table"] for k in ("encoder", "decoder"))
    for i in range(cfg.n_encoder_layers):
        lp = _layer(p["encoder"]["layers"], i)
        h = _rms(lp["attn_norm"], np.asarray(c["encoder_residual"][i], np.float64), eps)
        want = _t5_probs(lp["attn"], enc_table, h, h, enc_allowed, False, cfg)
        np.testing.assert_allclose(c["encoder_attn_probs"][i], want, atol=2e-5)
    enc_out = _rms(_f64(p["encoder"]["final_norm"]), np.asarray(c["encoder_residual"][-1]), eps)
    for i in range(cfg.n_decoder_layers):
        lp = _layer(p["decoder"]["layers"], i)
        x = np.asarray(c["residual"][i], np.float64)
        h = _rms(lp["attn_norm"], x, eps)
        want = _t5_probs(lp["attn"], dec_table, h, h, dec_allowed, True, cfg)
        np.testing.assert_allclose(c["attn_probs"][i], want, atol=2e-5)
        h = _rms(lp["cross_norm"], x + np.asarray(c["attn_out"][i]), eps)
        want = _t5_probs(lp["cross_attn"], None, h, enc_out, cross_allowed, False, cfg)
        np.testing.assert_allclose(c["cross_attn_probs"][i], want, atol=2e-5)
    final = _rms(_f64(p["decoder"]["final_norm"]), np.asarray(c["residual"][-1]), eps)
    want = final @ np.asarray(p["lm_head"]["w"], np.float64)
    np.testing.assert_allclose(out["logits"], want, atol=1e-4)


def test_seq2seq_patching():
    """Decoder block 0's output patched from a run with other decoder inputs (same source):
    that run's logits."""
    cfg = S2S["t5"]
    p, batch, plain = _s2s_run("t5")
    other = dict(batch, decoder_inputs=_tokens(99))
    want = _s2s(p, other, cfg=cfg, capture=SEQ2SEQ)
    res = want["captured"]["residual"]
    where = jnp.zeros(res.shape[:3], bool).at[1].set(True)
    patched = _s2s(p, batch, cfg=cfg, patch={"residual": (res, where)})
    np.testing.assert_allclose(patched["logits"], want["logits"], atol=1e-5)
    assert np.abs(np.asarray(patched["logits"]) - np.asarray(plain["logits"])).max() > 1e-2
