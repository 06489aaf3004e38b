"""Generation: KV-cached decoding equals recomputation; samplers obey their definitions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.errors import GenerationError
from llmzoo.generate import generate, sample
from llmzoo.models import decoder
from llmzoo.presets import get_model_preset

BASE = get_model_preset("gpt2-tiny")
CONFIGS = {
    "gpt2": BASE,
    "rope_gqa_window": dataclasses.replace(
        BASE,
        position="rope",
        n_kv_heads=2,
        norm="rmsnorm",
        mlp="swiglu",
        qkv_bias=False,
        sliding_window=6,
        tie_embeddings=False,
    ),
    "alibi": dataclasses.replace(BASE, position="alibi"),
}


def greedy_uncached(params, prompt, n, cfg):
    """Recomputes the whole sequence every step (no cache). The row is right-padded to one
    fixed length so a single compiled forward serves every step; causality makes the padding
    invisible to the positions we read."""
    forward = jax.jit(lambda p, t: decoder.apply(p, {"tokens": t}, cfg=cfg)["logits"])
    seq = list(prompt)
    width = len(prompt) + n
    for _ in range(n):
        row = jnp.asarray([seq + [0] * (width - len(seq))])
        seq.append(int(jnp.argmax(forward(params, row)[0, len(seq) - 1])))
    return seq[len(prompt) :]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_greedy_equals_uncached(name):
    cfg = CONFIGS[name]
    params = decoder.init(jax.random.key(1), cfg)
    # a larger init scale makes the argmax depend on the context, not only the last token
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)
    prompts = [[3, 17, 42, 7, 99, 5, 8], [250, 11]]  # different lengths: left padding
    out = generate(params, prompts, cfg=cfg, max_new_tokens=12)
    for prompt, got in zip(prompts, out, strict=True):
        assert got == greedy_uncached(params, prompt, 12, cfg)


def test_stop_token_ends_row():
    params = decoder.init(jax.random.key(0), BASE)
    free = generate(params, [[1, 2, 3]], cfg=BASE, max_new_tokens=8)[0]
    stop = free[2]
    cut = generate(params, [[1, 2, 3]], cfg=BASE, max_new_tokens=8, stop_tokens=(stop,))[0]
    assert cut == free[: free.index(stop) + 1]


def test_prompt_past_context_is_a_clear_error():
    params = decoder.init(jax.random.key(0), BASE)
    with pytest.raises(GenerationError, match="exceeds the model's context of 128"):
        generate(params, [[1] * 120], cfg=BASE, max_new_tokens=20)


def test_sampling_is_seeded_and_varies():
    params = decoder.init(jax.random.key(0), BASE)
    a = generate(params, [[1, 2]], cfg=BASE, max_new_tokens=10, temperature=1.0, seed=1)
    b = generate(params, [[1, 2]], cfg=BASE, max_new_tokens=10, temperature=1.0, seed=1)
    c = generate(params, [[1, 2]], cfg=BASE, max_new_tokens=10, temperature=1.0, seed=2)
    assert a == b and a != c


def test_top_k_only_draws_from_k_best():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 50)), jnp.float32)
    top3 = set(np.argsort(-np.asarray(logits[0]))[:3].tolist())
    draws = {int(sample(logits, jax.random.key(i), top_k=3)[0]) for i in range(200)}
    assert draws <= top3 and len(draws) == 3


def test_top_p_keeps_smallest_nucleus():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.asarray(probs, jnp.float32))[None]
    # p=0.7: {0.5, 0.3} reaches 0.8 >= 0.7, so tokens 2 and 3 are never drawn
    draws = {int(sample(logits, jax.random.key(i), top_p=0.7)[0]) for i in range(300)}
    assert draws == {0, 1}
    draws = {int(sample(logits, jax.random.key(i), top_p=0.5)[0]) for i in range(50)}
    assert draws == {0}


def test_temperature_zero_is_argmax():
    logits = jnp.asarray([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert sample(logits, jax.random.key(0), temperature=0.0).tolist() == [1, 0]


def test_low_temperature_concentrates():
    logits = jnp.asarray([[1.0, 1.5, 0.5]])
    draws = [int(sample(logits, jax.random.key(i), temperature=0.05)[0]) for i in range(50)]
    assert set(draws) == {1}
