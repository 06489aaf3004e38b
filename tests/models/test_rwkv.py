"""RWKV-4 (kind ``rwkv``): the chunked WKV against the step loop and float64, large keys, document
resets (token shift included), cached generation vs recompute, sharding, a short training run, and
config errors. Parity with transformers is in ``tests/hf/test_hf_rwkv.py``.

Shapes are tiny (V=64, D=16, A=24, L=2, chunks of 4) so that the whole file runs in seconds.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo import sharding
from llmzoo.errors import ConfigError
from llmzoo.generate import beam_search, generate
from llmzoo.layers import wkv
from llmzoo.models import registry, rwkv
from llmzoo.params import flatten, unflatten
from llmzoo.presets import get_model_preset, resolve_train_config

V, D, A, L = 64, 16, 24, 2
B, T = 2, 10  # every full-sequence call has this shape: one compile
CFG = dataclasses.replace(
    get_model_preset("rwkv-tiny"), vocab_size=V, d_model=D, d_attn=A, n_layers=L, chunk_size=4
)
_jit_apply = jax.jit(rwkv.apply, static_argnames=("cfg",))


def _apply(params, tokens, *, positions=None, segment_ids=None):
    batch = {"tokens": jnp.asarray(tokens)}
    if positions is not None:
        batch["positions"] = jnp.asarray(positions)
    if segment_ids is not None:
        batch["segment_ids"] = jnp.asarray(segment_ids)
    return _jit_apply(params, batch, cfg=CFG)["logits"]


def _random_params(seed=0):
    """Params drawn in numpy: N(0, 0.5) everywhere (norms and time vectors too)."""
    rng = np.random.default_rng(seed)
    flat = {
        k: 0.5 * rng.standard_normal(s.shape) for k, s in flatten(rwkv.param_specs(CFG)).items()
    }
    return unflatten({k: jnp.asarray(x, jnp.float32) for k, x in flat.items()})


def _wkv_float64(time_decay, time_first, k, v, reset):
    """The WKV recurrence in float64 with every exponent shifted by -60 (no running max)."""
    td, tf, k, v = (np.asarray(x, np.float64) for x in (time_decay, time_first, k, v))
    out = np.zeros_like(k)
    for b in range(k.shape[0]):
        num = den = np.zeros(k.shape[2])
        for t in range(k.shape[1]):
            if reset[b, t]:
                num = den = np.zeros(k.shape[2])
            e = np.exp(tf + k[b, t] - 60)
            out[b, t] = (num + e * v[b, t]) / (den + e)
            decay, e = np.exp(-np.exp(td)), np.exp(k[b, t] - 60)
            num, den = decay * num + e * v[b, t], decay * den + e
    return out


def test_chunked_wkv_equals_step_loop_with_large_keys_and_resets():
    """Keys in [30, 60] (e^60 overflows float32): the chunked form (chunks of 8, and a remainder
    of 5) equals the step loop, its state, and float64; from a carried-in state too."""
    rng = np.random.default_rng(0)  # numpy: no random program to compile per shape
    b, t = 2, 37
    time_decay, time_first = rng.standard_normal((2, A), np.float32)
    k = rng.uniform(30.0, 60.0, (b, t, A)).astype(np.float32)
    v = rng.standard_normal((b, t, A), np.float32)
    reset = np.zeros((b, t), bool)
    reset[0, 5] = reset[1, 16] = reset[1, 17] = True  # mid-chunk, and a chunk start
    state = wkv.zero_state(b, A)
    chunked = jax.jit(wkv.wkv_chunked, static_argnames="chunk_size")
    step = jax.jit(wkv.wkv_step)
    out, final = chunked(time_decay, time_first, k, v, state, jnp.asarray(reset), chunk_size=8)
    s = state
    for i in range(t):  # a Python loop over the recurrent step
        s = tuple(jnp.where(reset[:, i, None], z, x) for z, x in zip(state, s, strict=True))
        want, s = step(time_decay, time_first, k[:, i], v[:, i], s)
        np.testing.assert_allclose(out[:, i], want, atol=1e-5)
    for ours, theirs in ((final[0], s[0]), (final[1], s[1])):  # S = num e^max, Z = den e^max
        np.testing.assert_allclose(ours * jnp.exp(final[2] - s[2]), theirs, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(final[2] - s[2]).max()) < 1e-4
    ref = _wkv_float64(time_decay, time_first, k, v, reset)
    assert np.abs(np.asarray(out) - ref).max() < 1e-5
    again, _ = chunked(time_decay, time_first, k, v, final, None, chunk_size=16)
    looped, _ = jax.jit(wkv.wkv_recurrent)(time_decay, time_first, k, v, s)
    np.testing.assert_allclose(again, looped, atol=1e-5)
    grad = jax.grad(lambda k: chunked(time_decay, time_first, k, v, state, chunk_size=8)[0].sum())
    assert bool(jnp.isfinite(grad(k)).all())


def test_packed_segments_reset_state_and_token_shift():
    """Row 0 packs two documents; row 1 holds the second alone. Its logits are the same whether
    segment ids or positions mark the boundary, and differ without one (the token shift alone
    would carry the previous token: the doc boundary lies mid-chunk)."""
    params = _random_params()
    junk = jax.random.randint(jax.random.key(9), (B, T), 0, V)
    doc1 = jnp.array([3, 1, 4])
    doc2 = jnp.array([5, 9, 2, 6, 5])
    tokens = jnp.stack(
        [junk[0].at[:8].set(jnp.concatenate([doc1, doc2])), junk[1].at[:5].set(doc2)]
    )
    alone = _apply(params, tokens)[1, :5]
    segments = [[1] * 3 + [2] * 7, [1] * T]
    positions = [[0, 1, 2, 0, 1, 2, 3, 4, 5, 6], list(range(T))]
    for out in (_apply(params, tokens, segment_ids=segments),
                _apply(params, tokens, positions=positions)):  # fmt: skip
        np.testing.assert_allclose(out[0, 3:8], alone, atol=1e-5)
    carried = _apply(params, tokens)[0, 3:8]
    assert float(jnp.abs(carried - alone).max()) > 1e-3


def test_greedy_generation_equals_recompute():
    """Cached greedy decoding of left-padded prompts (prefill, then one recurrent step a token)
    equals argmax over full ``apply`` calls; one beam is greedy decoding (``select_cache``)."""
    params = _random_params(seed=4)
    prompts, new = [[5, 9, 2, 7, 1, 8], [11]], 4
    out = generate(params, prompts, cfg=CFG, max_new_tokens=new)
    seqs = [list(p) for p in prompts]
    for _ in range(new):  # right-padded to T: the padding is causally invisible
        tokens = np.zeros((B, T), np.int32)
        for row, seq in zip(tokens, seqs, strict=True):
            row[: len(seq)] = seq
        logits = _apply(params, tokens)
        for i, seq in enumerate(seqs):
            seq.append(int(jnp.argmax(logits[i, len(seq) - 1])))
    assert out == [seq[len(p) :] for seq, p in zip(seqs, prompts, strict=True)]
    assert registry.can_generate("rwkv")
    beam = beam_search(params, {"tokens": np.asarray([prompts[0]])}, cfg=CFG, num_beams=1,
                       max_new_tokens=new)  # fmt: skip
    assert beam[0].tolist() == out[0]


def test_cache_does_not_grow():
    params = _random_params()
    cache = rwkv.init_cache(params, {"tokens": jnp.zeros((B, 3), jnp.int32)}, cfg=CFG, max_len=999)
    shapes = {k: x.shape for k, x in cache.items()}
    assert shapes == {"att_x": (L, B, D), "ffn_x": (L, B, D)} | {
        k: (L, B, A) for k in ("num", "den", "max")
    }


def test_params_shard_under_every_strategy():
    specs = rwkv.param_specs(dataclasses.replace(CFG, d_attn=32, d_ff=64))
    for data, fsdp, tensor in ((8, 1, 1), (1, 8, 1), (1, 1, 8), (1, 2, 4)):
        mesh = sharding.make_mesh(data=data, fsdp=fsdp, tensor=tensor)
        shards = sharding.param_shardings(specs, mesh)
        assert tuple(shards["layers"]["att"]["w_k"].spec) == (
            None,
            "fsdp" if fsdp > 1 else None,
            "tensor" if tensor > 1 else None,
        )


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.rescale_every=-1"):
        resolve_train_config(overrides=["model.preset=rwkv-tiny", "model.rescale_every=-1"])
    with pytest.raises(ConfigError, match=r"model\.d_attn=0"):
        rwkv.RwkvConfig(d_attn=0)
    with pytest.raises(ConfigError, match=r"model\.chunk_size=0"):
        resolve_train_config(overrides=["model.kind=rwkv", "model.chunk_size=0"])


def test_rwkv_trains(tmp_path, tiny_run_args):
    """10 steps of causal LM on pydoc_topics lower the loss of a tiny RWKV; the run ends with a
    sample generated through the recurrent cache."""
    from llmzoo.train.loop import train

    args = [a for a in tiny_run_args if not a.startswith("model.n_heads=")]
    args += ["model.preset=rwkv-tiny", "steps=10", "eval_every=10", "ckpt_every=10"]
    cfg = resolve_train_config(overrides=[*args, "optim.lr=1e-2", f"run_dir={tmp_path}"])
    assert cfg.model.kind == "rwkv" and cfg.objective.name == "causal_lm"
    summary = train(cfg, progress=False, log=lambda *a, **k: None)
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < losses[0] - 0.5
    assert summary["val_loss"] < losses[0]
    assert isinstance(summary["sample"], str)
