"""Every family against transformers: logits both ways, and greedy decoding with a KV cache."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONFIGS, VARIANTS, batch, hf_logits

import llmzoo.hf
from llmzoo.generate import generate
from llmzoo.models import decoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ALL = list(CONFIGS) + list(VARIANTS)


def seq_len(name: str) -> int:
    # Past the sliding window (8) and, for the scaled RoPE variants, past the original context (32).
    return 40 if name.startswith("rope") else 24


@pytest.fixture(scope="module")
def loaded(hf_dirs):
    cache = {}

    def get(name):
        if name not in cache:
            model, path = hf_dirs(name)
            cfg, params = llmzoo.hf.load(path)
            tokens, mask = batch(seq_len(name), (seq_len(name), 17, 9))
            cache[name] = (model, cfg, params, tokens, mask, hf_logits(model, tokens, mask))
        return cache[name]

    return get


def llmzoo_logits(params, tokens, mask, cfg):
    out = decoder.apply(
        params, {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(mask)}, cfg=cfg
    )["logits"]
    return np.asarray(out)


@pytest.mark.parametrize("name", ALL)
def test_hf_to_llmzoo_logits(loaded, name):
    model, cfg, params, tokens, mask, ref = loaded(name)
    assert cfg.family == model.config.model_type
    got = llmzoo_logits(params, tokens, mask, cfg)
    keep = mask.astype(bool)
    assert np.abs(got[keep] - ref[keep]).max() < 1e-4


@pytest.mark.parametrize("name", ALL)
def test_llmzoo_to_hf_round_trip(loaded, name, tmp_path):
    _, cfg, params, tokens, mask, ref = loaded(name)
    llmzoo.hf.save(tmp_path, cfg, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    assert type(reloaded).__name__ == type(loaded(name)[0]).__name__
    keep = mask.astype(bool)
    assert np.abs(hf_logits(reloaded, tokens, mask)[keep] - ref[keep]).max() < 1e-5
    cfg2, _ = llmzoo.hf.load(tmp_path)
    assert cfg2 == dataclasses.replace(cfg, init_std=cfg2.init_std)


@pytest.mark.parametrize("name", ["mistral", "qwen2"])
def test_sliding_window_is_exercised(loaded, name):
    """Without its window the model would differ: the batch really runs past the window."""
    _, cfg, params, tokens, mask, ref = loaded(name)
    assert cfg.sliding_window == 8 and tokens.shape[1] > 8
    full = llmzoo_logits(params, tokens, mask, dataclasses.replace(cfg, sliding_window=None))
    keep = mask.astype(bool)
    assert np.abs(full[keep] - ref[keep]).max() > 1e-3


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_generation_matches_transformers(loaded, name):
    model, cfg, params, *_ = loaded(name)
    prompts = [[5, 17, 33, 2, 90, 11], [7, 140, 3, 61]]
    # One llmzoo batch (the shorter prompt is left-padded) against transformers one by one.
    ours = generate(params, prompts, cfg=cfg, max_new_tokens=20)
    for prompt, got in zip(prompts, ours, strict=True):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=20,
                min_new_tokens=20,
                do_sample=False,
                pad_token_id=0,
            )
        assert got == out[0, len(prompt) :].tolist()
