"""Mamba-1 against transformers' ``MambaForCausalLM``: logits both ways and greedy decoding.

Tiny random models (D=32, L=2, Z=8) with every parameter re-randomised; transformers runs its
sequential reference scan on CPU (no CUDA kernels).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import batch, hf_logits

import llmzoo.hf
from llmzoo.generate import generate
from llmzoo.models import mamba

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 160
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    state_size=8,
    expand=2,
    conv_kernel=4,
    pad_token_id=0,
    bos_token_id=None,
    eos_token_id=None,
)
CONFIGS = {  # the default layout, and biases everywhere with an untied head and explicit rank
    "mamba": BASE,
    "mamba_bias_untied": dict(BASE, use_bias=True, tie_word_embeddings=False, time_step_rank=3),
}


def _build(name: str, seed: int = 0):
    config = transformers.MambaConfig(**CONFIGS[name])
    torch.manual_seed(seed)
    model = transformers.MambaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = 0.3 * torch.randn_like(p)
            p.copy_(1.0 + noise if pname.endswith("norm.weight") or "norm_f" in pname else noise)
    return model.eval()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            model = _build(name)
            path = tmp_path_factory.mktemp(f"hf_{name}")
            model.save_pretrained(path)
            cfg, params = llmzoo.hf.load(path)
            tokens, mask = batch(20, (20, 13, 6))
            cache[name] = (model, cfg, params, tokens, mask, hf_logits(model, tokens, mask))
        return cache[name]

    return get


def _ours(params, tokens, mask, cfg):
    batch = {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(mask)}
    return np.asarray(mamba.apply(params, batch, cfg=cfg)["logits"])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_to_llmzoo_logits(loaded, name):
    """Right-padded rows of different lengths: the real tokens' logits agree within 1e-4."""
    model, cfg, params, tokens, mask, ref = loaded(name)
    assert cfg.kind == "mamba" and cfg.time_step_rank == model.config.time_step_rank
    keep = mask.astype(bool)
    assert np.abs(ref[keep]).max() > 1.0  # the comparison is not between near-zero numbers
    assert np.abs(_ours(params, tokens, mask, cfg)[keep] - ref[keep]).max() < 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_llmzoo_to_hf_round_trip(loaded, name, tmp_path):
    _, cfg, params, tokens, mask, ref = loaded(name)
    llmzoo.hf.save(tmp_path, cfg, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__ == "MambaForCausalLM"
    keep = mask.astype(bool)
    assert np.abs(hf_logits(reloaded, tokens, mask)[keep] - ref[keep]).max() < 1e-5
    cfg2, params2 = llmzoo.hf.load(tmp_path)
    assert cfg2 == dataclasses.replace(cfg, init_std=cfg2.init_std)
    for a, b in zip(*(jax_leaves(p) for p in (params, params2)), strict=True):
        np.testing.assert_array_equal(a, b)


def jax_leaves(params):
    from llmzoo.params import flatten

    return [np.asarray(v) for _, v in sorted(flatten(params).items())]


def test_greedy_generation_matches_transformers(loaded):
    """One left-padded llmzoo batch against transformers' cached ``generate`` prompt by prompt."""
    model, cfg, params, *_ = loaded("mamba")
    prompts = [[5, 17, 33, 2, 90, 11], [7, 140, 3]]
    ours = generate(params, prompts, cfg=cfg, max_new_tokens=12)
    for prompt, got in zip(prompts, ours, strict=True):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=12,
                min_new_tokens=12,
                do_sample=False,
                pad_token_id=0,
            )
        assert got == out[0, len(prompt) :].tolist()
