"""BLOOM beyond the shared parity table: left padding against transformers, published sizes,
and the config switches a BLOOM checkpoint cannot express."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import batch, hf_logits

import llmzoo.hf
from llmzoo.errors import CheckpointError, ConfigError
from llmzoo.hf.families import config_from_hf, config_to_hf
from llmzoo.models import decoder
from llmzoo.params import param_count
from llmzoo.presets import get_model_preset

PUBLISHED = {  # billions of parameters, as the model cards state them
    "bloom-560m": 0.559,
    "bloom-1b1": 1.065,
    "bloom-1b7": 1.722,
    "bloom-3b": 3.003,
    "bloom-7b1": 7.069,
    "bloom": 176.247,
}


@pytest.mark.parametrize("name", ["bloom", "bloom_6heads_untied"])
def test_left_padded_batch_matches_transformers(hf_dirs, name):
    """transformers' ALiBi counts key positions from the mask's cumsum; llmzoo from positions."""
    model, path = hf_dirs(name)
    cfg, params = llmzoo.hf.load(path)
    tokens, mask = batch(16, (16, 11, 5), seed=1)
    shift = 16 - mask.sum(1)
    tokens = np.stack([np.roll(t, s) for t, s in zip(tokens, shift, strict=True)])
    mask = np.stack([np.roll(m, s) for m, s in zip(mask, shift, strict=True)])
    positions = np.where(mask > 0, np.cumsum(mask, 1) - 1, -1)
    ref = hf_logits(model, tokens, mask)
    got = decoder.apply(
        params, {"tokens": jnp.asarray(tokens), "positions": jnp.asarray(positions)}, cfg=cfg
    )["logits"]
    keep = mask.astype(bool)
    assert np.abs(np.asarray(got)[keep] - ref[keep]).max() < 1e-4


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
    n = param_count(decoder.param_specs(get_model_preset(name))) / 1e9
    assert n == pytest.approx(PUBLISHED[name], rel=1e-3)


def test_preset_round_trips_through_config_json():
    cfg = get_model_preset("bloom-tiny")
    assert cfg.position == "alibi" and cfg.embed_norm and cfg.position_limit is None
    assert config_from_hf(config_to_hf(cfg)) == cfg


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(d_ff=200), "model.d_ff"),
        (dict(n_kv_heads=1), "model.n_kv_heads"),
        (dict(embed_norm=False), "model.embed_norm"),
        (dict(mlp="gelu"), "model.mlp"),
    ],
)
def test_inexpressible_switches_name_the_key(change, key):
    cfg = dataclasses.replace(get_model_preset("bloom-tiny"), **change)
    with pytest.raises(ConfigError, match=key):
        config_to_hf(cfg)


def test_post_layernorm_residual_is_refused():
    hf = config_to_hf(get_model_preset("bloom-tiny"))
    with pytest.raises(CheckpointError, match="apply_residual_connection_post_layernorm"):
        config_from_hf({**hf, "apply_residual_connection_post_layernorm": True})
