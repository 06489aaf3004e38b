"""The logit lens, head summaries and activation patching against hand-built references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.errors import ConfigError, DataError
from llmzoo.inspect import heads, induction, lens, patching
from llmzoo.models import decoder, rnn

CFG = decoder.DecoderConfig(
    vocab_size=64, max_seq_len=16, d_model=32, n_layers=2, n_heads=4, d_ff=64,
    dtype="float32", param_dtype="float32", init_std=0.2,
)  # fmt: skip


@pytest.fixture(scope="module")
def params():
    return decoder.init(jax.random.key(0), CFG)


def _tokens(seed, b=2, t=10):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, CFG.vocab_size)


def test_lens_last_row_is_the_models_log_softmax(params):
    tokens = _tokens(1)
    out = lens.logit_lens(params, {"tokens": tokens}, cfg=CFG)
    logits = decoder.apply(params, {"tokens": tokens}, cfg=CFG)["logits"]
    want = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    assert out["log_probs"].shape == (3, 2, 10, 64)
    np.testing.assert_allclose(out["log_probs"][-1], want, atol=1e-5)
    np.testing.assert_array_equal(out["top"][-1], jnp.argmax(logits, -1))
    # row 0 decodes the embeddings themselves: final norm, then the tied head
    emb = params["embed"]["table"][tokens] + params["pos_embed"]["table"][:10]
    ref = decoder.decode_hidden(params, emb, cfg=CFG)
    np.testing.assert_allclose(out["log_probs"][0], jax.nn.log_softmax(ref, -1), atol=1e-5)
    assert not np.allclose(out["log_probs"][0], out["log_probs"][-1], atol=1e-2)


def test_tools_raise_config_error_for_kinds_without_them():
    cfg = rnn.RnnConfig(vocab_size=16, d_model=8, n_layers=1)
    p = rnn.init(jax.random.key(0), cfg)
    batch = {"tokens": jnp.zeros((1, 4), jnp.int32)}
    with pytest.raises(ConfigError, match="rnn"):
        heads.attention_maps(p, batch, cfg=cfg)
    with pytest.raises(ConfigError, match="decoder"):
        lens.logit_lens(p, batch, cfg=cfg)


def _prev_token_and_uniform(t):
    prev = np.zeros((t, t), np.float32)
    prev[0, 0] = 1
    prev[np.arange(1, t), np.arange(t - 1)] = 1
    uniform = np.tril(np.ones((t, t), np.float32))
    uniform /= uniform.sum(-1, keepdims=True)
    return np.stack([prev, uniform])[None, None]  # [L=1, B=1, N=2, T, T]


def test_head_summaries_on_hand_built_maps():
    t = 6
    out = heads.head_summaries(_prev_token_and_uniform(t))
    uniform_prev = np.mean([1 / (i + 1) for i in range(1, t)])
    np.testing.assert_allclose(out["prev_token"], [[1.0, uniform_prev]], rtol=1e-6)
    np.testing.assert_allclose(
        out["entropy"], [[0.0, np.mean([math.log(i + 1) for i in range(t)])]], rtol=1e-6
    )
    # padding rows (segment 0) are left out: only queries 0..2 count
    seg = np.array([[1, 1, 1, 0, 0, 0]])
    out = heads.head_summaries(_prev_token_and_uniform(t), segment_ids=seg)
    np.testing.assert_allclose(out["entropy"][0, 1], np.mean(np.log([1, 2, 3])), rtol=1e-6)
    np.testing.assert_allclose(out["prev_token"][0, 1], np.mean([1 / 2, 1 / 3]), rtol=1e-6)


def test_induction_score_on_a_hand_built_map():
    half, off = 4, 1
    t = off + 2 * half
    perfect = np.zeros((t, t), np.float32)
    perfect[:, 0] = 1  # rows outside the second copy look at BOS
    for q in range(off + half, t):
        perfect[q] = 0
        perfect[q, q - half + 1] = 1
    half_right = perfect.copy()
    half_right[off + half : t : 2] = np.eye(t, dtype=np.float32)[0]  # every other query on BOS
    probs = np.stack([perfect, half_right, np.eye(t, dtype=np.float32)])[None, None]
    np.testing.assert_allclose(
        heads.induction_score_from_maps(probs, half, offset=off), [[1.0, 0.5, 0.0]]
    )
    tokens = induction.repeated_tokens(jax.random.key(0), 3, half, 10)
    assert tokens.shape == (3, t) and bool(jnp.all(tokens[:, 0] == 0))
    np.testing.assert_array_equal(tokens[:, 1 : 1 + half], tokens[:, 1 + half :])
    assert bool(jnp.all(tokens[:, 1:] != 0))


def _prompts(params):
    clean = _tokens(5, b=2, t=8)
    corrupt = clean.at[:, 3].set((clean[:, 3] + 7) % CFG.vocab_size)
    logits = decoder.apply(params, {"tokens": clean}, cfg=CFG)["logits"][:, -1]
    answer = jnp.argmax(logits, -1)
    wrong = jnp.argsort(logits, -1)[:, -2]
    return clean, corrupt, answer, wrong


def test_patching_whole_rows_restores_all_and_nothing_restores_none(params):
    clean, corrupt, answer, wrong = _prompts(params)
    rows = np.zeros((CFG.n_layers + 3, CFG.n_layers + 1, 1, 8), bool)
    for layer in range(CFG.n_layers + 1):
        rows[layer, layer] = True  # every position of residual row l
    rows[-1, :, :, :3] = True  # only positions before the corrupted one: nothing changes
    diffs = patching.patched_logit_diffs(params, clean, corrupt, answer, wrong, rows, cfg=CFG)
    frac = patching.restored_fraction(diffs)
    np.testing.assert_allclose(frac, [1, 1, 1, 0, 0], atol=1e-5)
    assert abs(float(diffs["clean"] - diffs["corrupt"])) > 1e-3
    ref = decoder.apply(params, {"tokens": clean}, cfg=CFG)["logits"][:, -1]
    want = jnp.mean(ref[jnp.arange(2), answer] - ref[jnp.arange(2), wrong])
    np.testing.assert_allclose(diffs["clean"], want, rtol=1e-5)


def test_patch_residual_map(params):
    clean, corrupt, answer, wrong = _prompts(params)
    m = patching.patch_residual(params, clean, corrupt, answer, wrong, cfg=CFG, chunk=8)
    assert m.shape == (CFG.n_layers + 1, 8)
    np.testing.assert_allclose(m[:, :3], 0, atol=1e-5)  # before the corruption: no effect
    np.testing.assert_allclose(m[0, 4:], 0, atol=1e-5)  # other embeddings: no effect
    np.testing.assert_allclose(m[0, 3], 1, atol=1e-5)  # the corrupted token itself: all
    np.testing.assert_allclose(m[-1, -1], 1, atol=1e-5)  # the last stream at the last position
    np.testing.assert_allclose(m[-1, :-1], 0, atol=1e-5)  # the last row elsewhere: nothing
    h = patching.patch_heads(params, clean, corrupt, answer, wrong, cfg=CFG)
    assert h.shape == (CFG.n_layers, CFG.n_heads) and np.all(np.isfinite(h))


def test_patching_errors(params):
    clean, corrupt, answer, wrong = _prompts(params)
    with pytest.raises(DataError, match="same logit difference"):
        patching.patch_residual(params, clean, clean, answer, wrong, cfg=CFG)
    with pytest.raises(DataError, match="length"):
        patching.patch_residual(params, clean, corrupt[:, :5], answer, wrong, cfg=CFG)
