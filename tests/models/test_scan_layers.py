"""``model.scan_layers=false``: every kind unrolls its layer loop and computes what the scanned
loop computes (outputs and gradients), with every remat policy. One preset per kind family
(decoder, encoder with a shared layer, seq2seq, recurrent): the kinds share the loop,
:func:`llmzoo.layers.remat.layer_loop`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.errors import ConfigError
from llmzoo.models import registry
from llmzoo.presets import get_model_preset, resolve_train_config

B, T = 2, 8
PRESETS = {
    "gpt2": ("gpt2-tiny", "none"),
    "albert": ("albert-tiny", "dots_saveable"),  # one layer shared by every application
    "t5": ("t5-tiny", "full"),
    "bart": ("bart-tiny", "dots_with_no_batch_dims_saveable"),  # cross-attention recomputed
    "lstm": ("lstm-tiny", "none"),
}


def _batch(cfg):
    rng = np.random.default_rng(0)
    ids = lambda *shape: jnp.asarray(rng.integers(3, cfg.vocab_size, shape), jnp.int32)  # noqa: E731
    if cfg.kind == "seq2seq":
        return {"inputs": ids(B, T), "input_mask": jnp.ones((B, T), jnp.int32),
                "decoder_inputs": ids(B, T)}  # fmt: skip
    return {"tokens": ids(B, T)}


def _loss_and_grads(params, batch, cfg):
    def loss(p):
        out = registry.get(cfg.kind).apply(p, batch, cfg=cfg)
        return jnp.mean(out["logits"].astype(jnp.float32) ** 2), out["logits"]

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.mark.parametrize("name", list(PRESETS))
def test_unrolled_layers_equal_the_scan(name):
    preset, policy = PRESETS[name]
    scanned = dataclasses.replace(get_model_preset(preset), remat=policy)
    unrolled = dataclasses.replace(scanned, scan_layers=False)
    params = registry.get(scanned.kind).init(jax.random.key(0), scanned)
    batch = _batch(scanned)
    (loss_s, logits_s), grads_s = _loss_and_grads(params, batch, scanned)
    (loss_u, logits_u), grads_u = _loss_and_grads(params, batch, unrolled)
    np.testing.assert_allclose(logits_u, logits_s, atol=1e-5)
    for got, want in zip(jax.tree.leaves(grads_u), jax.tree.leaves(grads_s), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    assert jax.tree.structure(grads_u) == jax.tree.structure(grads_s)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "bert-tiny", "t5-tiny"])
def test_unrolled_attention_kinds_compile_no_loop(preset):
    """The attention kinds have no other loop, so the unrolled program has no while at all."""
    cfg = get_model_preset(preset)
    params = registry.get(cfg.kind).init(jax.random.key(0), cfg)
    batch = _batch(cfg)

    def text(c):
        apply = lambda p, b: registry.get(c.kind).apply(p, b, cfg=c)  # noqa: E731
        return jax.jit(apply).lower(params, batch).as_text()

    assert "stablehlo.while" in text(cfg)
    assert "stablehlo.while" not in text(dataclasses.replace(cfg, scan_layers=False))


def test_scan_layers_is_a_checked_config_key():
    assert resolve_train_config(None, []).model.scan_layers is True
    assert resolve_train_config(None, ["model.scan_layers=false"]).model.scan_layers is False
    with pytest.raises(ConfigError, match="model.scan_layers"):
        resolve_train_config(None, ["model.scan_layers=sometimes"])
