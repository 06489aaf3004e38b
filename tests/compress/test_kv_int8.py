"""The int8 KV cache (``model.kv_cache_dtype=int8``): storage, attention and decoding.

Each cached key or value entry (one token, one KV head, H numbers) is stored as int8 with a
float32 scale ``max |x| / 127``: its round-trip error is at most half the scale, attention over
the int8 cache equals attention over its dequantized copy, greedy and beam decoding track the
float cache on GPT-2-like and Llama-like (RoPE, GQA) models, and the cache takes a quarter of a
float32 cache's bytes (half of bfloat16's) plus 4 bytes of scale per entry.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo.cli import main
from llmzoo.errors import ConfigError
from llmzoo.generate import beam_search
from llmzoo.layers import kv_cache
from llmzoo.layers.attention import MaskRule, dot_product_attention
from llmzoo.models import decoder
from llmzoo.presets import get_model_preset, train_config_for
from llmzoo.run_dir import read_config, write_run

GPT2 = dataclasses.replace(get_model_preset("gpt2-tiny"), dtype="float32")
LLAMA = dataclasses.replace(
    GPT2, position="rope", n_kv_heads=2, norm="rmsnorm", mlp="swiglu", qkv_bias=False
)
CONFIGS = {"gpt2": GPT2, "llama_gqa": LLAMA}
INT8 = {name: dataclasses.replace(cfg, kv_cache_dtype="int8") for name, cfg in CONFIGS.items()}


def _random(shape, seed, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale


def test_round_trip_error_is_within_half_a_scale():
    # magnitudes spanning 1e-3 .. 1e3 across entries, one all-zero entry
    x = _random((2, 3, 5, 16), 0) * 10.0 ** np.arange(-3, 2)[None, None, :, None]
    x[1, 2, 4] = 0.0
    got = kv_cache.quantize_slots(jnp.asarray(x))
    want_scale = np.abs(x).max(-1) / 127.0
    np.testing.assert_allclose(got.scale, want_scale, rtol=1e-6)
    safe = np.where(want_scale > 0, want_scale, 1.0)[..., None]
    np.testing.assert_array_equal(got.values, np.round(x / safe).astype(np.int8))
    assert got.values.dtype == jnp.int8 and got.scale.dtype == jnp.float32
    err = np.abs(np.asarray(got.dequantize()) - x)
    assert np.all(err <= want_scale[..., None] / 2 * (1 + 1e-5) + 1e-30)
    assert np.abs(got.values).max() == 127  # each entry's largest |x| maps to +-127
    assert not np.any(np.asarray(got.values)[1, 2, 4])


@pytest.mark.parametrize("t", [1, 5])
def test_attention_over_int8_cache_equals_attention_over_its_dequantized_copy(t):
    b, s, n, k, h, block, length = 2, 11, 4, 2, 8, 4, 9  # three blocks, the last shifted back
    k_pos = np.full((b, s), -1)
    k_pos[0, :length] = np.arange(length)
    k_pos[1, 2:length] = np.arange(length - 2)  # left padding
    k_pos = jnp.asarray(k_pos, jnp.int32)
    q = jnp.asarray(_random((b, t, n, h), 1))
    ck, cv = (kv_cache.quantize_slots(jnp.asarray(_random((b, k, s, h), i))) for i in (2, 3))
    plan = kv_cache.CachePlan(MaskRule(k_pos[:, length - t : length], k_pos), jnp.int32(length),
                              block=block)  # fmt: skip
    got = kv_cache.prefix_attention(q, ck, cv, plan)
    ref_k, ref_v = (jnp.swapaxes(c.dequantize()[:, :, :length], 1, 2) for c in (ck, cv))
    mask = MaskRule(k_pos[:, length - t : length], k_pos[:, :length]).dense_mask()
    want = dot_product_attention(q, ref_k, ref_v, mask=mask)
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.fixture(scope="module")
def params():
    return {name: decoder.init(jax.random.key(1), cfg) for name, cfg in CONFIGS.items()}


@pytest.fixture(scope="module")
def peaked(params):
    """Weights scaled up 2x: more peaked next-token distributions than at init."""
    return jax.tree.map(lambda x: x * 2.0 if x.ndim >= 2 else x, params)


def _forced_logits(cfg, p, tokens, positions, prompt_len):
    """Logits of a prefill then one cached step per further token (teacher forcing)."""
    step = jax.jit(functools.partial(decoder.apply_cached, cfg=cfg))
    cache = decoder.init_cache(p, {"tokens": tokens}, cfg=cfg, max_len=tokens.shape[1])
    dparams = decoder.decode_params(p, cfg=cfg)
    prompt = slice(0, prompt_len)
    logits, cache = step(dparams, tokens[:, prompt], cache, positions=positions[:, prompt])
    out = [logits[:, -1]]
    for i in range(prompt_len, tokens.shape[1] - 1):
        pos = positions[:, i : i + 1]
        logits, cache = step(dparams, tokens[:, i : i + 1], cache, positions=pos)
        out.append(logits[:, -1])
    return jnp.stack(out, axis=1), cache


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_int8_cache_tracks_the_float_cache(params, name, monkeypatch):
    """Blocks of 4 keys, a left-padded row: 14 decode steps after a prompt of 7, both caches fed
    the same tokens; each step's logits are within 0.5% of its largest logit, and the greedy
    choices agree."""
    monkeypatch.setattr(kv_cache, "DECODE_BLOCK", 4)
    tokens = jax.random.randint(jax.random.key(2), (2, 21), 1, GPT2.vocab_size)
    positions = jnp.stack([jnp.arange(21), jnp.arange(21) - 3]).astype(jnp.int32)
    positions = jnp.where(positions < 0, -1, positions)  # row 1 left-padded by 3
    want, _ = _forced_logits(CONFIGS[name], params[name], tokens, positions, 7)
    got, cache = _forced_logits(INT8[name], params[name], tokens, positions, 7)
    assert isinstance(cache["k"][0], kv_cache.Int8Slots)
    err = jnp.abs(got - want).max(axis=-1) / jnp.abs(want).max(axis=-1)  # [B, steps]
    assert float(err.max()) < 0.005, err  # (a bfloat16 forward pass is off by ~0.3-0.7%)
    assert float(jnp.mean(jnp.argmax(got, -1) == jnp.argmax(want, -1))) >= 0.9


def _nbytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("dtype, ratio", [(jnp.float32, 0.25), (jnp.bfloat16, 0.5)])
def test_int8_cache_bytes(params, dtype, ratio):
    cfg, b, s = LLAMA, 3, 40
    batch = {"tokens": jnp.zeros((b, 1), jnp.int32)}
    ref = decoder.init_cache(params["llama_gqa"], batch, cfg=cfg, max_len=s, dtype=dtype)
    cache = decoder.init_cache(params["llama_gqa"], batch, cfg=INT8["llama_gqa"], max_len=s)
    n_l, k, h = cfg.n_layers, cfg.kv_heads, cfg.dim_per_head
    pos_index = b * s * 4 + 4  # int32 positions and write index
    assert _nbytes(ref) == 2 * n_l * b * k * s * h * jnp.dtype(dtype).itemsize + pos_index
    assert _nbytes(cache) == 2 * n_l * (b * k * s * h + 4 * b * k * s) + pos_index
    kv_ref, kv8 = _nbytes((ref["k"], ref["v"])), _nbytes((cache["k"], cache["v"]))
    assert kv8 == pytest.approx(kv_ref * ratio * (1 + 4 / h))  # H = 16: scales add a quarter


def test_beam_search_with_int8_cache(peaked, name="llama_gqa"):
    """select_cache reorders int8 values and scales alike: the best beams are the float ones'."""
    prompts = jnp.asarray([[5, 17, 3, 99], [7, 300, 12, 250]], jnp.int32)
    kw = dict(num_beams=3, max_new_tokens=8)
    want = beam_search(peaked[name], {"tokens": prompts}, cfg=CONFIGS[name], **kw)
    got = beam_search(peaked[name], {"tokens": prompts}, cfg=INT8[name], **kw)
    np.testing.assert_array_equal(got, want)


def test_bad_kv_cache_dtype_is_one_line(tmp_path, error_line):
    with pytest.raises(ConfigError, match="model.kv_cache_dtype='fp8' is unknown; use auto or"):
        dataclasses.replace(GPT2, kv_cache_dtype="fp8")
    assert main(["train", f"run_dir={tmp_path}/run", "model.kv_cache_dtype=int4"]) == 2
    assert "model.kv_cache_dtype='int4' is unknown; use auto or int8" in error_line()


@pytest.fixture(scope="module")
def run(tmp_path_factory, peaked):
    """A params-only gpt2-tiny run with a word-level tokenizer (``w{i}`` is id i + 3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = tmp_path_factory.mktemp("kv_int8")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(509)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (root / "tok.json").write_text(tok.to_str())
    write_run(str(root / "run"), train_config_for(GPT2), peaked["gpt2"], str(root / "tok.json"))
    return root


def test_cli_kv_cache_for_quantize_and_generate(run, capsys, error_line):
    """``generate --kv-cache int8`` decodes mostly the float cache's greedy tokens, on a float run
    and on a run that ``quantize --kv-cache int8`` wrote (its config keeps the int8 cache)."""

    def words(run_name, *args):
        prompt = ["--prompt", "w5 w17 w3 w99", "--max-new-tokens", "10", "--no-stop"]
        assert main(["generate", "--run", str(run / run_name), *prompt, *args]) == 0
        return re.findall(r"w\d+", capsys.readouterr().out)

    def agree(a, b):
        return (
            len(a) == len(b) >= 12 and np.mean([x == y for x, y in zip(a, b, strict=True)]) >= 0.9
        )

    q8 = ["quantize", "--run", str(run / "run"), "--method", "int8", "--out", str(run / "q8")]
    assert main([*q8, "--kv-cache", "int8"]) == 0
    capsys.readouterr()  # its summary names paths (a worker's "popen-gw0/" reads as a word)
    assert read_config(str(run / "q8")).model.kv_cache_dtype == "int8"
    plain = words("run")
    assert agree(words("run", "--kv-cache", "int8"), plain)
    assert agree(words("q8"), words("q8", "--kv-cache", "auto"))
    assert main(["generate", "--run", str(run / "run"), "--prompt", "w1", "--kv-cache", "x"]) == 2
    assert "model.kv_cache_dtype='x' is unknown; use auto or int8" in error_line()
    assert main([*q8[:-1], str(run / "q8x"), "--kv-cache", "int4"]) == 2
    assert "model.kv_cache_dtype='int4' is unknown; use auto or int8" in error_line()
