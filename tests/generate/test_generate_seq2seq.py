"""Seq2seq generation through the generic loop: the cache (encoder output, cross K/V, decoder
self-attention K/V) gives exactly the tokens of recomputing everything each step; beam search and
the CLI use the same protocol."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.errors import GenerationError
from llmzoo.generate import beam_search, generate, generate_text
from llmzoo.models import encoder, seq2seq
from llmzoo.presets import get_model_preset

CONFIGS = {
    "t5": get_model_preset("t5-tiny"),
    "bart": dataclasses.replace(get_model_preset("bart-tiny"), max_seq_len=64),
}


def _params(cfg):
    params = seq2seq.init(jax.random.key(3), cfg)
    # a larger scale makes the argmax depend on the source and the decoded prefix
    return jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, params)


def greedy_uncached(params, source, n, cfg):
    """Runs encoder and decoder over the whole prefix at every step (no cache)."""
    forward = jax.jit(lambda p, b: seq2seq.apply(p, b, cfg=cfg)["logits"])
    out = [cfg.decoder_start_id]
    width = n + 1
    for _ in range(n):
        dec = jnp.asarray([out + [0] * (width - len(out))])
        batch = {"inputs": jnp.asarray([source]), "decoder_inputs": dec}
        out.append(int(jnp.argmax(forward(params, batch)[0, len(out) - 1])))
    return out[1:]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_greedy_equals_uncached(name):
    cfg = CONFIGS[name]
    params = _params(cfg)
    sources = [[5, 17, 42, 7, 99, 5, 8, 3], [250, 11, 3]]  # different lengths: right padding
    got = generate(params, cfg=cfg, inputs=sources, max_new_tokens=10)
    for source, row in zip(sources, got, strict=True):
        assert row == greedy_uncached(params, source, 10, cfg)


def test_generate_text_with_beams_equals_beam_search():
    cfg = dataclasses.replace(CONFIGS["t5"], eos_id=3)
    params = _params(cfg)

    class Tok:  # ids 10.. spell characters; 3 is EOS
        eos_id, bos_id, vocab_size = 3, -1, 512

        def encode(self, text):
            return [10 + ord(c) % 200 for c in text]

        def decode(self, ids):
            return " ".join(str(i) for i in ids)

    text = generate_text(params, Tok(), "hello", cfg=cfg, max_new_tokens=8, num_beams=4)
    ids = Tok().encode("hello") + [3]
    batch = {"inputs": np.asarray([ids]), "input_mask": np.ones((1, len(ids)), np.int32)}
    best = beam_search(params, batch, cfg=cfg, num_beams=4, max_new_tokens=8, eos_id=3)[0]
    best = [int(t) for t in best if t >= 0]
    best = best[: best.index(3)] if 3 in best else best
    assert text == " ".join(str(t) for t in best)
    greedy = generate_text(params, Tok(), "hello", cfg=cfg, max_new_tokens=8)
    assert isinstance(greedy, str)


def test_encoder_cannot_generate():
    cfg = get_model_preset("bert-tiny")
    params = encoder.init(jax.random.key(0), cfg)
    with pytest.raises(GenerationError, match="model.kind='encoder' cannot generate"):
        generate(params, [[1, 2]], cfg=cfg, max_new_tokens=2)


def test_seq2seq_needs_inputs():
    cfg = CONFIGS["t5"]
    with pytest.raises(GenerationError, match="needs inputs"):
        generate(_params(cfg), [[0]], cfg=cfg, max_new_tokens=2)
