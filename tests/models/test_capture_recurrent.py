"""Activation capture and patching in the recurrent kinds: rnn (LSTM, GRU), mamba, rwkv.

The captured ``state`` is checked against the cache path (``init_cache`` + ``apply_cached``) and
a hand-written LSTM step, the ``residual`` stream against the logits and by patching.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.errors import ConfigError
from llmzoo.models import mamba, registry, rnn, rwkv, seq2seq
from llmzoo.presets import get_model_preset
from tests.models.test_capture_kinds import (
    S2S,
    STATIC,
    B,
    T,
    _f64,
    _layer,
    _ln,
    _params,
    _rms,
    _run,
    _same_program,
    _tokens,
)

small = dict(vocab_size=64, d_model=16, n_layers=2)
REC = {
    "lstm": (rnn, dataclasses.replace(get_model_preset("lstm-tiny"), **small)),
    "gru": (rnn, dataclasses.replace(get_model_preset("gru-tiny"), **small)),
    "mamba": (mamba, dataclasses.replace(get_model_preset("mamba-tiny"), **small, state_size=4)),
    "rwkv": (rwkv, dataclasses.replace(get_model_preset("rwkv-tiny"), **small, d_attn=24)),
}


def _rec_batch(seed=0, vocab=64):
    return {"tokens": _tokens(seed, vocab=vocab)}


_REC_APPLY = {m: jax.jit(m.apply, static_argnames=STATIC) for m in (rnn, mamba, rwkv)}


def _rec_run(name):
    def make():
        module, cfg = REC[name]
        p, batch = _params(module, cfg), _rec_batch()
        return p, batch, _REC_APPLY[module](p, batch, cfg=cfg, capture=("residual", "state"))

    return _run("recurrent", name, make)


def _cached_state(name, p, tokens):
    """The state after every token of ``tokens`` through ``init_cache`` + ``apply_cached``."""
    module, cfg = REC[name]
    cache = module.init_cache(p, {"tokens": tokens}, cfg=cfg, max_len=T)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    if name != "rwkv":  # one prefill call: its final state
        return module.apply_cached(p, tokens, cache, cfg=cfg, positions=positions)[1]
    step = jax.jit(module.apply_cached, static_argnames="cfg")
    for t in range(T):  # token by token: the recurrent WKV step
        _, cache = step(p, tokens[:, t : t + 1], cache, cfg=cfg, positions=positions[:, t : t + 1])
    return cache


@pytest.mark.parametrize("name", list(REC))
def test_recurrent_captures(name):
    """Same program and outputs; the residual's last row gives the logits; the state's last
    step is the state the cache path ends in."""
    module, cfg = REC[name]
    p, batch, out = _rec_run(name)
    assert _same_program(module.apply, p, batch, cfg)
    if name in ("lstm", "rwkv"):
        plain = _REC_APPLY[module](p, batch, cfg=cfg)
        np.testing.assert_array_equal(out["logits"], plain["logits"])
    res, state = out["captured"]["residual"], out["captured"]["state"]
    assert res.shape == (cfg.n_layers + 1, B, T, cfg.d_model)
    last = np.asarray(res[-1], np.float64)
    if name == "mamba":
        last = _rms(_f64(p["final_norm"]), last, cfg.norm_eps)
    elif name == "rwkv":
        last = _ln(_f64(p["final_norm"]), last, rwkv.FINAL_NORM_EPS)
    head = p["embed"]["table"].T if cfg.tie_embeddings else p["lm_head"]["w"]
    np.testing.assert_allclose(out["logits"], last @ np.asarray(head, np.float64), atol=1e-4)
    cached = _cached_state(name, p, batch["tokens"])
    if name in ("lstm", "gru"):
        assert state.shape == (cfg.n_layers, B, T, 2 if name == "lstm" else 1, cfg.d_model)
        for j, want in enumerate(cached["state"]):
            np.testing.assert_allclose(state[:, :, -1, j], want, atol=1e-5)
    elif name == "mamba":
        assert state.shape == (cfg.n_layers, B, T, cfg.d_inner, cfg.state_size)
        np.testing.assert_allclose(state[:, :, -1], cached["ssm"], atol=1e-5)
    else:
        assert set(state) == set(rwkv.STATE_KEYS) and state["num"].shape == (2, B, T, 24)
        for key in rwkv.STATE_KEYS:
            np.testing.assert_allclose(state[key][:, :, -1], cached[key], rtol=1e-5, atol=1e-5)


def test_lstm_state_is_the_cell_recurrence():
    """Layer 0's (h, c) after the first two tokens, by hand: i, f, g, o = z (PyTorch order)."""
    p, _, out = _rec_run("lstm")
    lp = _layer(p["layers"], 0)
    x = np.asarray(out["captured"]["residual"][0], np.float64)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h = c = np.zeros((B, REC["lstm"][1].d_model))
    for t in range(2):
        z = x[:, t] @ lp["w_ih"].reshape(x.shape[-1], -1) + lp["b_ih"].reshape(-1)
        z = (z + h @ lp["w_hh"].reshape(h.shape[-1], -1) + lp["b_hh"].reshape(-1)).reshape(B, 4, -1)
        c = sig(z[:, 1]) * c + sig(z[:, 0]) * np.tanh(z[:, 2])
        h = sig(z[:, 3]) * np.tanh(c)
        np.testing.assert_allclose(out["captured"]["state"][0, :, t, 0], h, atol=1e-5)
        np.testing.assert_allclose(out["captured"]["state"][0, :, t, 1], c, atol=1e-5)


def test_mamba_chunked_scan_captures_the_same_states():
    _, cfg = REC["mamba"]
    p, batch, out = _rec_run("mamba")
    chunked = dataclasses.replace(cfg, scan="chunked", scan_chunk=3)  # 3 chunks, one padded
    got = _REC_APPLY[mamba](p, batch, cfg=chunked, capture=("state",))["captured"]["state"]
    np.testing.assert_allclose(got, out["captured"]["state"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["lstm", "mamba", "rwkv"])
def test_recurrent_patching(name):
    """Block 0's output patched from another input, everywhere: that input's logits."""
    module, cfg = REC[name]
    p, batch, plain = _rec_run(name)
    fn = _REC_APPLY[module]
    want = fn(p, _rec_batch(1), cfg=cfg, capture=("residual", "state"))
    res = want["captured"]["residual"]
    where = jnp.zeros(res.shape[:3], bool).at[1].set(True)
    patched = fn(p, batch, cfg=cfg, patch={"residual": (res, where)})
    np.testing.assert_allclose(patched["logits"], want["logits"], atol=1e-5)
    assert np.abs(np.asarray(patched["logits"]) - np.asarray(plain["logits"])).max() > 1e-2


def test_recurrent_kinds_have_no_attention_maps():
    p, batch = _params(rnn, REC["lstm"][1]), _rec_batch()
    kind = registry.get("rnn")
    msg = r"^model kind rnn has no attention, so it has no 'attn_probs'; it can capture residual"
    with pytest.raises(ConfigError, match=msg):
        kind.apply(p, batch, cfg=REC["lstm"][1], capture=("attn_probs",))
    with pytest.raises(ConfigError, match="model kind rnn cannot patch 'state'"):
        kind.apply(p, batch, cfg=REC["lstm"][1], patch={"state": (None, None)})
    with pytest.raises(ConfigError, match="model kind seq2seq cannot capture 'state'"):
        seq2seq.apply({}, {}, cfg=S2S["t5"], capture=("state",))
