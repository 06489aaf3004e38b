"""The fast decoding path: attention over the filled blocks of a per-layer cache.

Cached decoding must equal recomputation when the context spans several key blocks (the last one
shifted back to fit the cache), with sliding windows, ALiBi, GQA and left padding; a decode step
compiles once and its cost does not grow with the cache's capacity; beam search still reorders
the per-layer cache rows as Hugging Face's does.
"""

import dataclasses
import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llmzoo.hf
from llmzoo.generate import beam_search
from llmzoo.layers import kv_cache
from llmzoo.layers.attention import MaskRule, dot_product_attention
from llmzoo.layers.positional import alibi_bias, alibi_slopes
from llmzoo.models import decoder
from llmzoo.presets import get_model_preset

BASE = dataclasses.replace(get_model_preset("gpt2-tiny"), dtype="float32")
CONFIGS = {
    "gpt2": BASE,
    "rope_gqa_window": dataclasses.replace(
        BASE, position="rope", n_kv_heads=2, norm="rmsnorm", mlp="swiglu", sliding_window=5
    ),
    "alibi_mqa": dataclasses.replace(BASE, position="alibi", n_kv_heads=1),
}


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("t", [1, 6])
@pytest.mark.parametrize("window, alibi", [(None, False), (4, False), (None, True)])
def test_prefix_attention_equals_dense_over_the_filled_slots(t, window, alibi):
    b, s, n, k, h, block = 2, 11, 4, 2, 8, 4  # 11 slots: the third block is shifted back
    length = 9  # slots 9, 10 hold junk, read with the last block but masked
    k_pos = np.full((b, s), -1)
    k_pos[0, :length] = np.arange(length)
    k_pos[1, 3:length] = np.arange(length - 3)  # left padding: three empty slots
    k_pos = jnp.asarray(k_pos, jnp.int32)
    q_pos = k_pos[:, length - t : length]
    q, ck, cv = _random((b, t, n, h), 0), _random((b, k, s, h), 1), _random((b, k, s, h), 2)
    ck, cv = ck.at[:, :, length:].set(1e6), cv.at[:, :, length:].set(1e6)
    slopes = jnp.asarray(alibi_slopes(n), jnp.float32) if alibi else None
    rule = MaskRule(q_pos, k_pos, window=window)
    plan = kv_cache.CachePlan(rule, jnp.int32(length), slopes, block=block)
    got = kv_cache.prefix_attention(q, ck, cv, plan)
    ref_k, ref_v = (jnp.swapaxes(x[:, :, :length], 1, 2) for x in (ck, cv))
    ref_rule = MaskRule(q_pos, k_pos[:, :length], window=window)
    bias = None if slopes is None else alibi_bias(slopes, q_pos, k_pos[:, :length])
    want = dot_product_attention(q, ref_k, ref_v, mask=ref_rule.dense_mask(), bias=bias)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_blocks_are_even_and_never_more_than_needed():
    for s in range(1, 1100):
        size = kv_cache._block_size(s, 256)
        blocks = -(-s // size)
        assert size <= 256 and blocks == -(-s // 256), s
        assert blocks * size - s < blocks, s  # the last block re-reads fewer slots than blocks


@pytest.mark.parametrize("length", [1, 150, 151, 260, 300])
def test_even_blocks_of_a_300_slot_cache_equal_dense(length):
    """300 slots in blocks of at most 256 are two blocks of 150; lengths at and across the
    boundary, and the full cache."""
    b, s, n, h = 1, 300, 2, 8
    k_pos = jnp.where(jnp.arange(s) < length, jnp.arange(s), -1)[None].astype(jnp.int32)
    q_pos = k_pos[:, length - 1 : length]
    q, ck, cv = _random((b, 1, n, h), 3), _random((b, n, s, h), 4), _random((b, n, s, h), 5)
    plan = kv_cache.CachePlan(MaskRule(q_pos, k_pos), jnp.int32(length), block=256)
    got = kv_cache.prefix_attention(q, ck, cv, plan)
    ref_k, ref_v = (jnp.swapaxes(x[:, :, :length], 1, 2) for x in (ck, cv))
    mask = MaskRule(q_pos, k_pos[:, :length]).dense_mask()
    np.testing.assert_allclose(
        got, dot_product_attention(q, ref_k, ref_v, mask=mask), atol=1e-5, rtol=1e-5
    )


@pytest.fixture(scope="module")
def params():
    out = {}
    for name, cfg in CONFIGS.items():
        p = decoder.init(jax.random.key(1), cfg)
        out[name] = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, p)
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_steps_across_blocks_equal_apply(params, name, monkeypatch):
    """Blocks of 4 keys: a left-padded prompt of 7, then 14 steps, crossing five blocks."""
    monkeypatch.setattr(kv_cache, "DECODE_BLOCK", 4)
    cfg, p = CONFIGS[name], params[name]
    step = jax.jit(functools.partial(decoder.apply_cached, cfg=cfg))  # a fresh jit: block 4
    tokens = jax.random.randint(jax.random.key(2), (2, 21), 1, cfg.vocab_size)
    pad = 3  # row 1: 18 tokens, left-padded by 3
    positions = jnp.stack([jnp.arange(21), jnp.arange(21) - pad]).astype(jnp.int32)
    positions = jnp.where(positions < 0, -1, positions)
    full = decoder.apply(p, {"tokens": tokens}, cfg=cfg)["logits"]
    alone = decoder.apply(p, {"tokens": tokens[1:, pad:]}, cfg=cfg)["logits"][0]
    cache = decoder.init_cache(p, {"tokens": tokens}, cfg=cfg, max_len=22)
    dparams = decoder.decode_params(p, cfg=cfg)
    logits, cache = step(dparams, tokens[:, :7], cache, positions=positions[:, :7])
    got = [logits]
    for i in range(7, 21):
        logits, cache = step(
            dparams, tokens[:, i : i + 1], cache, positions=positions[:, i : i + 1]
        )
        got.append(logits)
    got = jnp.concatenate(got, axis=1)
    np.testing.assert_allclose(got[0], full[0], atol=2e-4)
    np.testing.assert_allclose(got[1, pad:], alone, atol=2e-4)
    assert step._cache_size() == 2  # the prefill and one decode step for every token


def _step_cost(cfg, p, capacity):
    tokens = jnp.zeros((1, 1), jnp.int32)
    cache = decoder.init_cache(p, {"tokens": tokens}, cfg=cfg, max_len=capacity)
    step = jax.jit(functools.partial(decoder.apply_cached, cfg=cfg))
    compiled = step.lower(p, tokens, cache, positions=tokens).compile()
    return compiled.cost_analysis()["flops"]


def test_decode_step_cost_does_not_follow_capacity(params):
    """The compiled step attends one block at a time: a 16x larger cache adds no FLOPs (the
    dense step over the whole cache grew with it)."""
    cfg = dataclasses.replace(BASE, max_seq_len=4096)
    p = decoder.init(jax.random.key(0), cfg)
    small, large = _step_cost(cfg, p, 256), _step_cost(cfg, p, 4096)
    assert abs(large - small) <= 0.01 * small


def test_bfloat16_cache_tracks_float32(params):
    cfg, p = CONFIGS["gpt2"], params["gpt2"]
    tokens = jax.random.randint(jax.random.key(3), (1, 12), 1, cfg.vocab_size)
    positions = jnp.arange(12, dtype=jnp.int32)[None]
    full = decoder.apply(p, {"tokens": tokens}, cfg=cfg)["logits"]
    cache = decoder.init_cache(p, {"tokens": tokens}, cfg=cfg, max_len=16, dtype=jnp.bfloat16)
    assert cache["k"][0].dtype == jnp.bfloat16
    logits, _ = decoder.apply_cached(p, tokens, cache, cfg=cfg, positions=positions)
    scale = float(jnp.abs(full).max())
    assert float(jnp.abs(logits - full).max()) < 0.02 * scale


def test_beam_search_matches_transformers():
    """select_cache over the per-layer cache: beams reorder rows as Hugging Face's do."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=None,
        eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for w in model.parameters():
            w.mul_(8.0)  # a peaked distribution: beams that really diverge
    prompt = [5, 17, 33, 2, 90, 11]
    with torch.no_grad():
        want = model.generate(
            torch.tensor([prompt]), num_beams=3, max_new_tokens=10, min_new_tokens=10,
            do_sample=False, pad_token_id=0, early_stopping=True,
        )[0, len(prompt):].tolist()  # fmt: skip
    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        cfg, p = llmzoo.hf.load(path)
    got = beam_search(
        p, {"tokens": np.asarray([prompt])}, cfg=cfg, num_beams=3, max_new_tokens=10,
        early_stopping=True,
    )  # fmt: skip
    assert got[0].tolist() == want
