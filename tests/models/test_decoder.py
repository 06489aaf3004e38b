"""Decoder model: causality, packing, KV-cache equivalence, padding, dropout, remat.

Params are drawn in numpy from the spec shapes (non-zero biases, scales near 1) rather than with
``decoder.init``: that exercises every term and saves an XLA compile per config. Shapes are
shared across tests ([2, 8] for full-sequence references) so jit caches hit.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.models import decoder
from llmzoo.params import flatten, unflatten
from llmzoo.presets import get_model_preset

GPT2 = get_model_preset("gpt2-tiny")
# Llama/Mistral-style switches: RoPE (partial), GQA, sliding window, RMSNorm, SwiGLU, untied.
ROPE_GQA_SWA = dataclasses.replace(
    GPT2,
    family="mistral",
    position="rope",
    rope_fraction=0.5,
    n_kv_heads=2,
    sliding_window=3,
    norm="rmsnorm",
    mlp="swiglu",
    qkv_bias=False,
    out_bias=False,
    mlp_bias=False,
    norm_bias=False,
    tie_embeddings=False,
)
# ALiBi + embedding LayerNorm (BLOOM) + MQA + parallel residual (GPT-J).
ALIBI_MQA = dataclasses.replace(
    GPT2, position="alibi", embed_norm=True, n_kv_heads=1, parallel_residual=True
)
CONFIGS = {"gpt2": GPT2, "rope_gqa_swa": ROPE_GQA_SWA, "alibi_mqa": ALIBI_MQA}
B, T = 2, 8

_jit_apply = jax.jit(decoder.apply, static_argnames=("cfg", "return_hidden"))


def _apply(p, tokens, *, cfg, rng=None, return_hidden=False, **batch):
    """The protocol's ``apply`` on a batch dict; the logits (and hidden states if asked)."""
    batch = {"tokens": tokens, **{k: v for k, v in batch.items() if v is not None}}
    out = _jit_apply(p, batch, cfg=cfg, rng=rng, return_hidden=return_hidden)
    return (out["logits"], out["hidden"]) if return_hidden else out["logits"]


_apply_cached = jax.jit(decoder.apply_cached, static_argnames=("cfg",))


def _random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    flat = {}
    for name, spec in flatten(decoder.param_specs(cfg)).items():
        x = rng.standard_normal(spec.shape)
        if name.endswith("scale"):
            x = 1.0 + 0.1 * x
        elif name.split("/")[-1].startswith("b") or name.endswith("bias"):
            x = 0.1 * x
        else:
            fan_in = cfg.d_ff if name.endswith("w_down") else cfg.d_model
            x = 0.05 * x if name.endswith("table") else x / np.sqrt(fan_in)
        flat[name] = jnp.asarray(x, jnp.float32)
    return unflatten(flat)


@pytest.fixture(scope="module")
def params():
    return {name: _random_params(cfg) for name, cfg in CONFIGS.items()}


def _tokens(shape, seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 0, GPT2.vocab_size)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_apply_is_causal(params, name):
    cfg = CONFIGS[name]
    tokens = _tokens((B, T))
    changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % cfg.vocab_size)
    a = _apply(params[name], tokens, cfg=cfg)
    b = _apply(params[name], changed, cfg=cfg)
    assert a.shape == (B, T, cfg.vocab_size) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert float(jnp.abs(a[:, 5:] - b[:, 5:]).max()) > 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_packed_documents_equal_separate(params, name):
    cfg, p = CONFIGS[name], params[name]
    doc1, doc2 = _tokens((3,), seed=1), _tokens((5,), seed=2)
    packed = jnp.stack([jnp.concatenate([doc1, doc2]), jnp.concatenate([doc2, doc1])])
    segments = jnp.array([[1] * 3 + [2] * 5, [1] * 5 + [2] * 3])
    positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 0, 1, 2]])
    out = _apply(p, packed, cfg=cfg, positions=positions, segment_ids=segments)
    # reference: each document alone at the start of a row (what follows it is causally hidden)
    junk = _tokens((B, T), seed=9)
    alone = _apply(p, jnp.stack([junk[0].at[:3].set(doc1), junk[1].at[:5].set(doc2)]), cfg=cfg)
    d1, d2 = alone[0, :3], alone[1, :5]
    np.testing.assert_allclose(out[0, :3], d1, atol=1e-5)
    np.testing.assert_allclose(out[0, 3:], d2, atol=1e-5)
    np.testing.assert_allclose(out[1, :5], d2, atol=1e-5)
    np.testing.assert_allclose(out[1, 5:], d1, atol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_prefill_and_decode_match_apply(params, name):
    cfg, p = CONFIGS[name], params[name]
    prompt = 5
    tokens = _tokens((B, T), seed=3)
    full = _apply(p, tokens, cfg=cfg)

    cache = decoder.init_cache(p, {"tokens": tokens}, cfg=cfg, max_len=12)
    pos = jnp.broadcast_to(jnp.arange(prompt), (B, prompt))
    logits, cache = _apply_cached(p, tokens[:, :prompt], cache, cfg=cfg, positions=pos)
    np.testing.assert_allclose(logits, full[:, :prompt], atol=1e-5)
    assert int(cache["index"]) == prompt
    np.testing.assert_array_equal(cache["pos"][0], list(range(prompt)) + [-1] * 7)
    for i in range(prompt, T):
        step_pos = jnp.full((B, 1), i)
        logits, cache = _apply_cached(p, tokens[:, i : i + 1], cache, cfg=cfg, positions=step_pos)
        np.testing.assert_allclose(logits[:, 0], full[:, i], atol=1e-5)
    assert int(cache["index"]) == T
    assert len(cache["k"]) == cfg.n_layers  # one [B, K, S, H] array per layer
    assert cache["k"][0].shape == (B, cfg.kv_heads, 12, cfg.dim_per_head)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_left_padded_batch_matches_unpadded(params, name):
    cfg, p = CONFIGS[name], params[name]
    # prompt length 5 and cache length 12 as above, so the jitted prefill/decode are reused
    short, long_, nxt = _tokens((3,), seed=4), _tokens((5,), seed=5), _tokens((2,), seed=6)
    pad = 2
    prompts = jnp.stack([jnp.concatenate([jnp.zeros((pad,), jnp.int32), short]), long_])
    positions = jnp.array([[-1] * pad + list(range(3)), list(range(5))])
    cache = decoder.init_cache(p, {"tokens": prompts}, cfg=cfg, max_len=12)
    logits, cache = _apply_cached(p, prompts, cache, cfg=cfg, positions=positions)
    # one decode step: row 0 continues at position 3, row 1 at position 5
    step, _ = _apply_cached(p, nxt[:, None], cache, cfg=cfg, positions=jnp.array([[3], [5]]))
    # reference: each unpadded sequence followed by its next token (and junk, causally hidden)
    junk = _tokens((B, T), seed=7)
    row0 = junk[0].at[:4].set(jnp.concatenate([short, nxt[:1]]))
    row1 = junk[1].at[:6].set(jnp.concatenate([long_, nxt[1:]]))
    ref = _apply(p, jnp.stack([row0, row1]), cfg=cfg)
    np.testing.assert_allclose(logits[0, pad:], ref[0, :3], atol=1e-5)
    np.testing.assert_allclose(logits[1], ref[1, :5], atol=1e-5)
    np.testing.assert_allclose(step[0, 0], ref[0, 3], atol=1e-5)
    np.testing.assert_allclose(step[1, 0], ref[1, 5], atol=1e-5)


def test_return_hidden(params):
    cfg, p = GPT2, params["gpt2"]
    tokens = _tokens((B, T))
    logits, hidden = _apply(p, tokens, cfg=cfg, return_hidden=True)
    assert hidden.shape == (cfg.n_layers, B, T, cfg.d_model)
    np.testing.assert_allclose(logits, _apply(p, tokens, cfg=cfg), atol=1e-5)
    assert float(jnp.abs(hidden[0] - hidden[1]).max()) > 1e-4
    # the LM head applied to the last hidden state gives the logits (final LayerNorm, tied)
    x = np.asarray(hidden[-1], np.float64)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    fn = {k: np.asarray(v, np.float64) for k, v in p["final_norm"].items()}
    normed = (x - mu) / np.sqrt(var + cfg.norm_eps) * fn["scale"] + fn["bias"]
    np.testing.assert_allclose(logits, normed @ np.asarray(p["embed"]["table"]).T, atol=1e-4)


def test_dropout_only_with_rng(params):
    cfg = dataclasses.replace(GPT2, dropout=0.2)
    p, tokens = params["gpt2"], _tokens((B, T))
    base = _apply(p, tokens, cfg=GPT2)
    np.testing.assert_allclose(_apply(p, tokens, cfg=cfg), base, atol=1e-6)  # eval: no dropout
    a = _apply(p, tokens, cfg=cfg, rng=jax.random.key(1))
    b = _apply(p, tokens, cfg=cfg, rng=jax.random.key(1))
    c = _apply(p, tokens, cfg=cfg, rng=jax.random.key(2))
    assert float(jnp.abs(a - base).max()) > 1e-3
    assert float(jnp.abs(a - c).max()) > 1e-3
    np.testing.assert_array_equal(a, b)


def test_remat_same_logits_and_grads(params):
    p, tokens = params["rope_gqa_swa"], _tokens((B, T + 1))

    def loss(params, cfg):
        logits = decoder.apply(params, {"tokens": tokens[:, :-1]}, cfg=cfg)["logits"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    cfg = ROPE_GQA_SWA
    remat = dataclasses.replace(cfg, remat=True)
    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    (l0, g0), (l1, g1) = grad(p, cfg), grad(p, remat)
    assert float(l0) == pytest.approx(float(l1), abs=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)
    assert float(jnp.abs(g0["layers"]["attn"]["wq"]).max()) > 0


def test_param_tree_layout():
    specs = decoder.param_specs(ROPE_GQA_SWA)
    assert "pos_embed" not in specs and "lm_head" in specs
    assert specs["layers"]["attn"]["wk"].shape == (2, 64, 2, 16)
    assert "w_gate" in specs["layers"]["mlp"] and "bias" not in specs["final_norm"]
    gpt2 = decoder.param_specs(GPT2)
    assert gpt2["pos_embed"]["table"].shape == (GPT2.max_seq_len, 64) and "lm_head" not in gpt2
    assert "embed_norm" not in gpt2
    alibi = decoder.param_specs(ALIBI_MQA)
    assert "pos_embed" not in alibi and alibi["embed_norm"]["bias"].shape == (64,)


def test_alibi_has_no_position_limit():
    """Like RoPE, ALiBi has no table: a cache longer than max_seq_len is allowed."""
    assert ALIBI_MQA.position_limit is None and GPT2.position_limit == GPT2.max_seq_len
    tokens = jnp.zeros((1, 4), jnp.int32)
    cache = decoder.init_cache(None, {"tokens": tokens}, cfg=ALIBI_MQA, max_len=300)
    assert cache["pos"].shape == (1, 300)
