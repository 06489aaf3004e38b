"""Seq2seq model: cached decoding, padding invariance, causality, errors, jit/grad, presets.

Params are drawn in numpy from the spec shapes (non-zero biases, scales near 1) so that every
term is exercised. Two configs cover the switches: T5 v1.1-like (relative buckets, pre-norm
RMSNorm, GeGLU, untied head, 3 encoder and 2 decoder layers) and BART-like (learned positions
with offset, post-norm LayerNorm with biases, embedding norm and scale, tied head, logits bias).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.errors import ConfigError
from llmzoo.models import registry, seq2seq
from llmzoo.params import flatten, param_count, unflatten
from llmzoo.presets import get_model_preset

T5 = dataclasses.replace(
    get_model_preset("t5-tiny"),
    vocab_size=64,
    n_encoder_layers=3,
    relative_buckets=8,
    relative_max_distance=10,
)
BART = dataclasses.replace(
    get_model_preset("bart-tiny"), vocab_size=64, max_seq_len=32, embed_scale=True
)
CONFIGS = {"t5": T5, "bart": BART}
B, S, T = 2, 9, 7

_apply = jax.jit(seq2seq.apply, static_argnames=("cfg", "return_hidden"))
_apply_cached = jax.jit(seq2seq.apply_cached, static_argnames=("cfg",))
_init_cache = jax.jit(seq2seq.init_cache, static_argnames=("cfg", "max_len"))


def _random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    flat = {}
    for name, spec in flatten(seq2seq.param_specs(cfg)).items():
        x = rng.standard_normal(spec.shape)
        if name.endswith("scale"):
            x = 1.0 + 0.1 * x
        elif name.endswith("bias") or name.split("/")[-1].startswith("b"):
            x = 0.1 * x
        else:  # moderate attention logits: T5 does not scale them by H ** -0.5
            x = 0.15 * x
        flat[name] = jnp.asarray(x, jnp.float32)
    return unflatten(flat)


@pytest.fixture(scope="module")
def params():
    return {name: _random_params(cfg) for name, cfg in CONFIGS.items()}


def _batch(cfg, src_lengths=(S, 5), seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(S)[None, :] < np.asarray(src_lengths)[:, None]).astype(np.int32)
    tokens = rng.integers(3, cfg.vocab_size, (B, T)).astype(np.int32)
    tokens[:, 0] = cfg.decoder_start_id
    return {
        "inputs": jnp.asarray(rng.integers(3, cfg.vocab_size, (B, S)) * mask, jnp.int32),
        "input_mask": jnp.asarray(mask),
        "decoder_inputs": jnp.asarray(tokens),
    }


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_decoding_matches_apply(params, name):
    """Greedy, one token at a time against the cache, equals ``apply`` on the whole sequence."""
    cfg, p = CONFIGS[name], params[name]
    batch = _batch(cfg)
    cache = _init_cache(p, batch, cfg=cfg, max_len=T)
    token = batch["decoder_inputs"][:, :1]
    tokens, step_logits = [token], []
    for t in range(T):
        positions = jnp.full((B, 1), t, jnp.int32)
        logits, cache = _apply_cached(p, token, cache, cfg=cfg, positions=positions)
        step_logits.append(logits[:, 0])
        token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)[:, None]
        tokens.append(token)
    full = _apply(p, batch | {"decoder_inputs": jnp.concatenate(tokens[:-1], axis=1)}, cfg=cfg)
    np.testing.assert_allclose(jnp.stack(step_logits, 1), full["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encoder_padding_is_invisible(params, name):
    """A right-padded source gives the logits of the same source alone, whatever the padding."""
    cfg, p = CONFIGS[name], params[name]
    batch = _batch(cfg)
    padded = _apply(p, batch, cfg=cfg)["logits"][1]
    noisy = batch | {"inputs": batch["inputs"].at[1, 5:].set(7)}  # other tokens at the padding
    alone = {
        "inputs": batch["inputs"][1:, :5],
        "input_mask": batch["input_mask"][1:, :5],
        "decoder_inputs": batch["decoder_inputs"][1:],
    }
    np.testing.assert_allclose(_apply(p, noisy, cfg=cfg)["logits"][1], padded, atol=1e-6)
    np.testing.assert_allclose(_apply(p, alone, cfg=cfg)["logits"][0], padded, atol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decoder_is_causal(params, name):
    cfg, p = CONFIGS[name], params[name]
    batch = _batch(cfg)
    ref = _apply(p, batch, cfg=cfg)["logits"]
    changed = batch | {"decoder_inputs": batch["decoder_inputs"].at[:, 4].set(1)}
    out = _apply(p, changed, cfg=cfg)["logits"]
    np.testing.assert_allclose(out[:, :4], ref[:, :4], atol=1e-6)
    assert np.abs(out[:, 4:] - ref[:, 4:]).max() > 1e-3


def test_select_cache_reorders_rows(params):
    cfg, p = T5, params["t5"]
    batch = _batch(cfg)
    cache = _init_cache(p, batch, cfg=cfg, max_len=T)
    start = batch["decoder_inputs"][:, :1]
    ref, _ = _apply_cached(p, start, cache, cfg=cfg, positions=jnp.zeros((B, 1), jnp.int32))
    order = jnp.array([1, 1, 0])
    swapped = seq2seq.select_cache(cache, order)
    out, _ = jax.jit(seq2seq.apply_cached, static_argnames=("cfg",))(
        p, start[order], swapped, cfg=cfg, positions=jnp.zeros((3, 1), jnp.int32)
    )
    np.testing.assert_allclose(out, ref[order], atol=1e-6)


def test_missing_decoder_start_id_is_refused():
    with pytest.raises(ConfigError, match="model.decoder_start_id is not set"):
        dataclasses.replace(T5, decoder_start_id=None)


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(position="alibi"), "model.position"),
        (dict(norm_position="sandwich"), "model.norm_position"),
        (dict(n_decoder_layers=0), "model.n_decoder_layers"),
        (dict(d_model=66, head_dim=None), "model.n_heads"),
    ],
)
def test_bad_config_values_name_the_key(change, key):
    with pytest.raises(ConfigError, match=key):
        dataclasses.replace(T5, **change)


def test_jit_grad_with_dropout(params):
    cfg = dataclasses.replace(BART, dropout=0.1)
    batch = _batch(cfg)

    def loss(p, rng):
        logits = seq2seq.apply(p, batch, cfg=cfg, rng=rng)["logits"]
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    value, grads = jax.jit(jax.value_and_grad(loss))(params["bart"], jax.random.key(1))
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["decoder"]["layers"]["cross_attn"]["wk"]).sum()) > 0
    deterministic = _apply(params["bart"], batch, cfg=BART)["logits"]
    dropped = _apply(params["bart"], batch, cfg=cfg)["logits"]  # no rng: no dropout
    np.testing.assert_allclose(dropped, deterministic, atol=1e-6)


def test_registry_and_protocol():
    assert registry.get("seq2seq") is seq2seq
    assert registry.config_class("seq2seq") is seq2seq.Seq2SeqConfig
    assert registry.can_generate("seq2seq")
    assert T5.position_limit is None and BART.position_limit == 32


# transformers' parameter counts (AutoModelForSeq2SeqLM on the meta device; T5 v1.1 untied).
# The model cards round them (t5-small 60M, t5-base 220M, bart-base 140M, bart-large 400M).
HF_COUNTS = {
    "t5-small": 60_506_624,
    "t5-base": 222_903_552,
    "t5-large": 737_668_096,
    "t5-v1_1-small": 76_961_152,
    "t5-v1_1-base": 247_577_856,
    "t5-v1_1-large": 783_150_080,
    "flan-t5-base": 247_577_856,
    "bart-base": 139_420_416,
    "bart-large": 406_291_456,
}


@pytest.mark.parametrize("name", list(HF_COUNTS))
def test_preset_param_counts(name):
    ours = param_count(seq2seq.param_specs(get_model_preset(name)))
    assert abs(ours - HF_COUNTS[name]) / HF_COUNTS[name] < 0.01
