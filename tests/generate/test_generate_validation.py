"""Bad generation arguments are one clear error raised before jitting, from Python and the CLI;
a learned position table never clamps silently."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest

from llmzoo.cli import main
from llmzoo.errors import DataError, GenerationError
from llmzoo.generate import generate, generate_text, sample
from llmzoo.models import decoder
from llmzoo.presets import get_model_preset, train_config_for
from llmzoo.run_dir import write_run

BASE = get_model_preset("gpt2-tiny")  # vocab 512, 128 learned positions


@pytest.fixture(scope="module")
def params():
    return decoder.init(jax.random.key(0), BASE)


class IdTokenizer:
    """Text ``"3 17 42"`` is the ids 3, 17, 42; no special tokens."""

    vocab_size = 100_000
    bos_id = eos_id = -1

    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"top_k": -1}, "top_k=-1 is negative; use 0 to keep every token"),
        ({"temperature": -0.5}, "temperature=-0.5 is outside [0, inf); use 0 for greedy"),
        ({"temperature": math.nan}, "temperature=nan is outside [0, inf)"),
        ({"top_p": 0.0, "temperature": 1.0}, "top_p=0.0 is outside (0, 1]; use 1.0 to keep"),
        ({"top_p": 1.5}, "top_p=1.5 is outside (0, 1]"),
        ({"top_p": -0.2}, "top_p=-0.2 is outside (0, 1]"),
        ({"max_new_tokens": 0}, "max_new_tokens=0; ask for at least 1 token"),
    ],
)
def test_bad_sampler_argument_is_a_generation_error(params, kwargs, expected):
    kwargs = {"max_new_tokens": 4} | kwargs
    with pytest.raises(GenerationError) as e:
        generate(params, [[1, 2, 3]], cfg=BASE, **kwargs)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_sample_itself_refuses_top_p_zero():
    # top_p=0 used to keep no token at all and draw token 0 forever
    with pytest.raises(GenerationError, match=r"top_p=0.0 is outside \(0, 1\]"):
        sample(jnp.zeros((1, 8)), jax.random.key(0), top_p=0.0)


@pytest.mark.parametrize("bad", [70000, 512, -1])
def test_prompt_id_outside_vocabulary(params, bad):
    with pytest.raises(GenerationError) as e:
        generate(params, [[1, 2], [3, bad, 4]], cfg=BASE, max_new_tokens=2)
    assert str(e.value).startswith(
        f"prompt token id {bad} is outside the vocabulary [0, 512); encode with the tokenizer"
    )


def test_seq2seq_input_id_outside_vocabulary():
    cfg = get_model_preset("t5-tiny")
    bad = cfg.vocab_size + 5
    # checked on the host before the params are touched
    with pytest.raises(GenerationError, match=f"input token id {bad} is outside the vocabulary"):
        generate({}, inputs=[[4, 5], [bad]], cfg=cfg, max_new_tokens=2)


@pytest.mark.parametrize("num_beams", [0, -2])
def test_num_beams_below_one(params, num_beams):
    with pytest.raises(GenerationError, match=f"num_beams={num_beams} is below 1"):
        generate_text(params, IdTokenizer(), "1 2", cfg=BASE, num_beams=num_beams)


def test_beam_search_checks_ids_and_sampler_arguments(params):
    tok = IdTokenizer()
    with pytest.raises(GenerationError, match="prompt token id 600 is outside"):
        generate_text(params, tok, "1 600", cfg=BASE, num_beams=2, max_new_tokens=2)
    with pytest.raises(GenerationError, match="top_k=-3 is negative"):
        generate_text(params, tok, "1 2", cfg=BASE, num_beams=2, max_new_tokens=2, top_k=-3)


def test_beam_search_past_the_position_table(params):
    # beam search has no context check of its own: the cache refuses, instead of clamping
    with pytest.raises(DataError, match="a KV cache of 202 tokens exceeds the 128 learned"):
        generate_text(params, IdTokenizer(), "1 2", cfg=BASE, num_beams=2, max_new_tokens=200)


def test_off_values_still_work(params):
    kw = {"cfg": BASE, "max_new_tokens": 6, "temperature": 1.0, "seed": 3}
    plain = generate(params, [[1, 2, 3]], **kw)
    assert generate(params, [[1, 2, 3]], top_k=0, top_p=1.0, **kw) == plain
    assert len(plain[0]) == 6 and all(0 <= t < 512 for t in plain[0])
    # top_k past the vocabulary keeps every token too
    assert generate(params, [[1, 2, 3]], top_k=10_000, **kw) == plain


def test_apply_past_learned_positions_raises(params):
    at_limit = jnp.zeros((1, 128), jnp.int32)
    assert decoder.apply(params, {"tokens": at_limit}, cfg=BASE)["logits"].shape == (1, 128, 512)
    over = jnp.zeros((1, 129), jnp.int32)
    msg = r"a sequence of 129 tokens exceeds the 128 learned positions \(model.max_seq_len=128\)"
    with pytest.raises(DataError, match=msg):
        decoder.apply(params, {"tokens": over}, cfg=BASE)
    with pytest.raises(DataError, match=msg):  # the length is static: raised while tracing
        jax.jit(lambda p, t: decoder.apply(p, {"tokens": t}, cfg=BASE))(params, over)
    with pytest.raises(DataError, match="a KV cache of 129 tokens exceeds"):
        decoder.init_cache(params, {"tokens": over}, cfg=BASE, max_len=129)


def test_rope_has_no_table_to_overflow():
    cfg = dataclasses.replace(BASE, position="rope", max_seq_len=16)
    p = decoder.init(jax.random.key(0), cfg)
    out = decoder.apply(p, {"tokens": jnp.zeros((1, 17), jnp.int32)}, cfg=cfg)
    assert out["logits"].shape == (1, 17, 512)
    cache = decoder.init_cache(p, {"tokens": jnp.zeros((1, 1))}, cfg=cfg, max_len=32)
    assert cache["pos"].shape == (1, 32)


# --- the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, params):
    """A params-only gpt2-tiny run whose word-level tokenizer has 603 ids (model vocab 512)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = tmp_path_factory.mktemp("gen_validation")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(600)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (root / "tokenizer.json").write_text(tok.to_str())
    write_run(str(root / "run"), train_config_for(BASE), params, str(root / "tokenizer.json"))
    return str(root / "run")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--top-k", "-3"], "error: top_k=-3 is negative; use 0 to keep every token"),
        (["--temperature", "-1"], "error: temperature=-1.0 is outside [0, inf)"),
        (["--top-p", "1.5"], "error: top_p=1.5 is outside (0, 1]"),
        (["--top-p", "0"], "error: top_p=0.0 is outside (0, 1]"),
        (["--num-beams", "0"], "error: num_beams=0 is below 1"),
        (["--max-new-tokens", "0"], "error: max_new_tokens=0; ask for at least 1 token"),
        (["--prompt", "w1 w599"], "error: prompt token id 602 is outside the vocabulary [0, 512)"),
        (
            ["--num-beams", "2", "--max-new-tokens", "500"],
            "error: a KV cache of 501 tokens exceeds the 128 learned positions",
        ),
    ],
)
def test_cli_bad_generation_argument_is_one_line(run, args, expected, error_line):
    assert main(["generate", "--run", run, "--prompt", "w1", *args]) == 2
    assert error_line().startswith(expected)


def test_cli_off_values_still_generate(run, capsys):
    args = ["--top-k", "0", "--top-p", "1.0", "--temperature", "1.0", "--max-new-tokens", "3"]
    assert main(["generate", "--run", run, "--prompt", "w1 w2", *args]) == 0
    assert capsys.readouterr().out.startswith("w1 w2")
