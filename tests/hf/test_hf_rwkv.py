"""RWKV-4 against transformers' ``RwkvForCausalLM`` (its CPU WKV loop): logits both ways and
greedy decoding through the recurrent cache.

transformers' RWKV has no padding mask, so right-padded rows are compared on their real tokens
(later padding is causally invisible). Every parameter is drawn from N(0, 0.5), norms included.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import VOCAB, batch

import llmzoo.hf
from llmzoo.generate import generate
from llmzoo.models import rwkv

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BASE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=3,
    context_length=64,
    rescale_every=0,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
CONFIGS = {
    "rwkv": BASE,
    # A != D and F != 4 D (transformers' own cache assumes A = D: logits only).
    "widths": dict(BASE, attention_hidden_size=48, intermediate_size=80),
    # transformers halves the residual stream after blocks 2 and 4 at inference.
    "rescaled": dict(BASE, num_hidden_layers=4, rescale_every=2),
    "tied": dict(BASE, tie_word_embeddings=True),
}
_jit_apply = jax.jit(rwkv.apply, static_argnames=("cfg",))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model = transformers.RwkvForCausalLM(transformers.RwkvConfig(**CONFIGS[name]))
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0.0, 0.5)
            model.eval()
            path = tmp_path_factory.mktemp(f"hf_rwkv_{name}")
            model.save_pretrained(path)
            cfg, params = llmzoo.hf.load(path)
            tokens, mask = batch(24, (24, 17, 9))
            cache[name] = (model, cfg, params, tokens, mask, _hf_logits(model, tokens))
        return cache[name]

    return get


def _hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(tokens), use_cache=False).logits.numpy()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_to_llmzoo_logits(loaded, name):
    model, cfg, params, tokens, mask, ref = loaded(name)
    assert cfg.family == "rwkv" and cfg.tie_embeddings == (name == "tied")
    batch_in = {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(mask)}
    got = np.asarray(_jit_apply(params, batch_in, cfg=cfg)["logits"])
    keep = mask.astype(bool)
    assert np.abs(got[keep] - ref[keep]).max() < 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_llmzoo_to_hf_round_trip(loaded, name, tmp_path):
    _, cfg, params, tokens, mask, ref = loaded(name)
    llmzoo.hf.save(tmp_path, cfg, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__ == "RwkvForCausalLM"
    keep = mask.astype(bool)
    assert np.abs(_hf_logits(reloaded, tokens)[keep] - ref[keep]).max() < 1e-5
    cfg2, _ = llmzoo.hf.load(tmp_path)
    assert cfg2 == dataclasses.replace(cfg, init_std=cfg2.init_std)


@pytest.mark.parametrize("name", ["rwkv", "rescaled"])
def test_greedy_generation_matches_transformers(loaded, name):
    model, cfg, params, *_ = loaded(name)
    prompts = [[5, 17, 33, 2, 90, 11], [7, 140, 3, 61]]
    # One llmzoo batch (the shorter prompt is left-padded) against transformers one by one.
    ours = generate(params, prompts, cfg=cfg, max_new_tokens=12)
    for prompt, got in zip(prompts, ours, strict=True):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=12,
                min_new_tokens=12,
                do_sample=False,
                pad_token_id=0,
            )
        assert got == out[0, len(prompt) :].tolist()
