"""T5 v1.0, T5 v1.1 and BART against transformers: logits both ways, and beam search.

The tiny models differ from the presets (head_dim != D / N, other bucket counts, encoder and
decoder depths that differ, scaled BART embeddings) and have every parameter and buffer
re-randomised. Run with ``-s`` to print the parity table.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llmzoo.hf
from llmzoo.errors import CheckpointError
from llmzoo.generate.beam import beam_search
from llmzoo.models import seq2seq

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 96
T5_COMMON = dict(
    vocab_size=VOCAB, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0
)
CONFIGS = {
    # ReLU, tied head with the D ** -0.5 rescale, H * N != D, 16 buckets within 20 tokens.
    "t5_v1_0": (
        "T5Config",
        dict(
            T5_COMMON,
            d_model=48,
            d_kv=16,
            d_ff=96,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=16,
            relative_attention_max_distance=20,
        ),
    ),
    # Gated GELU, untied head, 3 encoder layers and 2 decoder layers.
    "t5_v1_1": (
        "T5Config",
        dict(
            T5_COMMON,
            d_model=64,
            d_kv=16,
            d_ff=80,
            num_layers=3,
            num_decoder_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=12,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
        ),
    ),
    "bart": (
        "BartConfig",
        dict(
            vocab_size=VOCAB,
            d_model=64,
            encoder_layers=2,
            decoder_layers=3,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=96,
            decoder_ffn_dim=96,
            max_position_embeddings=40,
            scale_embedding=True,
            dropout=0.0,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=2,
            forced_eos_token_id=None,
        ),
    ),
}
SRC_LENGTHS, TGT_LENGTHS = (11, 6), (9, 5)
# name -> (attention, MLP) weight gains: diverse beams, yet well-conditioned float32 logits (T5
# does not scale its attention logits, so large attention weights make them ill-conditioned).
WEIGHT_GAIN = {"t5_v1_0": (2.0, 1.5), "t5_v1_1": (1.0, 3.0), "bart": (2.0, 2.0)}


def build_hf_model(name: str, seed: int = 0):
    """A tiny transformers seq2seq LM; every parameter and buffer re-randomised (float32)."""
    cls_name, kwargs = CONFIGS[name]
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForSeq2SeqLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    if name == "t5_v1_1":  # transformers 5 ties T5 in memory; a v1.1 checkpoint's head is its own
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn_like(p)
            if p.ndim == 1 and "norm" in pname and pname.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif "shared" in pname or "lm_head" in pname:  # logits with a std of about 2 to 4
                p.copy_(noise * (1.0 if name == "t5_v1_0" else 0.4))
            elif p.ndim == 1 or "relative" in pname or "positions" in pname:
                p.copy_(noise * 0.3)
            else:  # wider than variance-preserving: less repetitive beams
                is_attn = any(k in pname for k in ("SelfAttention", "EncDecAttention", "attn"))
                gain = WEIGHT_GAIN[name][0 if is_attn else 1]
                p.copy_(noise * gain * p.shape[-1] ** -0.5)
        for bname, buf in model.named_buffers():
            if "final_logits_bias" in bname:
                buf.copy_(torch.randn_like(buf))
    return model.eval()


def batch(name: str, seed: int = 0) -> dict:
    """Right-padded sources and decoder inputs (starting with the decoder start id), int64."""
    rng = np.random.default_rng(seed)
    start = CONFIGS[name][1]["decoder_start_token_id"]
    out = {}
    for key, lengths in (("inputs", SRC_LENGTHS), ("decoder_inputs", TGT_LENGTHS)):
        n = max(lengths)
        mask = (np.arange(n)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
        out[key] = rng.integers(3, VOCAB, (len(lengths), n)) * mask
        out["input_mask" if key == "inputs" else "decoder_mask"] = mask
    out["decoder_inputs"][:, 0] = start
    return out


def hf_logits(model, b: dict) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(b["inputs"]),
            attention_mask=torch.as_tensor(b["input_mask"]),
            decoder_input_ids=torch.as_tensor(b["decoder_inputs"]),
            decoder_attention_mask=torch.as_tensor(b["decoder_mask"]),
        )
    return out.logits.float().numpy()


_apply = jax.jit(seq2seq.apply, static_argnames=("cfg", "return_hidden"))


def llmzoo_logits(params, b: dict, cfg) -> np.ndarray:
    return np.asarray(_apply(params, {k: jnp.asarray(v) for k, v in b.items()}, cfg=cfg)["logits"])


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """name -> (hf model, llmzoo cfg, params, batch, hf logits), built and converted once."""
    cache = {}

    def get(name):
        if name not in cache:
            model = build_hf_model(name)
            path = tmp_path_factory.mktemp(f"hf_{name}")
            model.save_pretrained(path)
            cfg, params = llmzoo.hf.load(path)
            b = batch(name)
            cache[name] = (model, cfg, params, b, hf_logits(model, b))
        return cache[name]

    return get


def _max_diff(got, ref, b) -> float:
    keep = b["decoder_mask"].astype(bool)
    return float(np.abs(got[keep] - ref[keep]).max())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hf_to_llmzoo_logits(loaded, name):
    model, cfg, params, b, ref = loaded(name)
    assert cfg.family == model.config.model_type
    diff = _max_diff(llmzoo_logits(params, b, cfg), ref, b)
    print(f"\n{name}: hf -> llmzoo max |logits diff| {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_llmzoo_to_hf_round_trip(loaded, name, tmp_path):
    model, cfg, params, b, ref = loaded(name)
    llmzoo.hf.save(tmp_path, cfg, params)
    reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    assert type(reloaded).__name__ == type(model).__name__
    diff = _max_diff(hf_logits(reloaded, b), ref, b)
    print(f"\n{name}: llmzoo -> hf max |logits diff| {diff:.2e}")
    assert diff < 1e-5
    cfg2, _ = llmzoo.hf.load(tmp_path)
    assert cfg2 == dataclasses.replace(cfg, init_std=cfg2.init_std)


def test_t5_v1_1_tied_in_memory_falls_back_to_shared(tmp_path):
    """transformers 5 saves a v1.1 model whose head stayed tied without ``lm_head.weight``."""
    cls_name, kwargs = CONFIGS["t5_v1_1"]
    model = transformers.T5ForConditionalGeneration(getattr(transformers, cls_name)(**kwargs))
    model.save_pretrained(tmp_path)
    cfg, params = llmzoo.hf.load(tmp_path)
    assert not cfg.tie_embeddings and not cfg.decoder_output_scale
    b = batch("t5_v1_1")
    assert _max_diff(llmzoo_logits(params, b, cfg), hf_logits(model.eval(), b), b) < 1e-4


def test_bare_bart_model_loads_without_logits_bias(loaded, tmp_path):
    """A ``BartModel`` checkpoint (no ``model.`` prefix, no final_logits_bias) loads and saves."""
    model, *_ = loaded("bart")
    model.model.save_pretrained(tmp_path / "bare")
    cfg, params = llmzoo.hf.load(tmp_path / "bare")
    assert not cfg.final_logits_bias
    full = transformers.BartForConditionalGeneration.from_pretrained(
        tmp_path / "bare", attn_implementation="eager"
    ).eval()
    b = batch("bart")
    ref = hf_logits(full, b)
    assert _max_diff(llmzoo_logits(params, b, cfg), ref, b) < 1e-4
    llmzoo.hf.save(tmp_path / "out", cfg, params)
    reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        tmp_path / "out", attn_implementation="eager"
    ).eval()
    assert _max_diff(hf_logits(reloaded, b), ref, b) < 1e-5


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(model_type="t5", feed_forward_proj="gated-tanh"), "feed_forward_proj"),
        (dict(model_type="bart", normalize_before=True), "normalize_before"),
        (dict(model_type="bart", add_final_layer_norm=True), "add_final_layer_norm"),
    ],
)
def test_unsupported_config_values_are_refused(config, message):
    with pytest.raises(CheckpointError, match=message):
        llmzoo.hf.families.config_from_hf(config)


# Beam search: (model, length_penalty, early_stopping).
BEAM_CASES = [
    ("t5_v1_0", 1.0, False),
    ("t5_v1_1", 2.0, True),
    ("t5_v1_1", 1.0, "never"),
    ("bart", 0.5, "never"),
    ("bart", -1.0, False),
]
NEW_TOKENS = 10


def _hf_beam(model, b, cfg, eos, length_penalty, early_stopping):
    gen = transformers.GenerationConfig(
        num_beams=4,
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_id=eos,
        pad_token_id=cfg.pad_id,
        decoder_start_token_id=cfg.decoder_start_id,
        bos_token_id=None,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        no_repeat_ngram_size=0,
        min_length=0,
    )
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.as_tensor(b["inputs"]),
            attention_mask=torch.as_tensor(b["input_mask"]),
            generation_config=gen,
        )
    return out.numpy()


@pytest.mark.parametrize("name, length_penalty, early_stopping", BEAM_CASES)
def test_beam_search_matches_transformers(loaded, name, length_penalty, early_stopping):
    model, cfg, params, b, _ = loaded(name)
    # An eos the model really emits: the first token of the search without an eos that, made the
    # eos, still ends a best beam.
    free = _hf_beam(model, b, cfg, None, length_penalty, early_stopping)
    for eos in dict.fromkeys(free[:, 1:].T.reshape(-1).tolist()):
        ref = _hf_beam(model, b, cfg, eos, length_penalty, early_stopping)
        if (ref[:, 1:] == eos).any():
            break
    got = beam_search(
        params,
        {"inputs": b["inputs"], "input_mask": b["input_mask"]},
        cfg=cfg,
        num_beams=4,
        max_new_tokens=NEW_TOKENS,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_id=eos,
    )
    print(f"\n{name} beams (eos {eos}): hf {ref[:, 1:].tolist()} llmzoo {got.tolist()}")
    assert (ref[:, 1:] == eos).any()  # the eos path is exercised
    np.testing.assert_array_equal(got, ref[:, 1:])


def test_beam_search_decoder_only_matches_transformers(hf_dirs):
    """The same search from left-padded prompts of a decoder-only kind (tiny random Llama)."""
    model, path = hf_dirs("llama")
    cfg, params = llmzoo.hf.load(path)
    tokens = np.array([[5, 17, 33, 2, 90, 11], [0, 0, 7, 140, 3, 61]])
    mask = (tokens > 0).astype(np.int64)
    gen = transformers.GenerationConfig(
        num_beams=4, do_sample=False, max_new_tokens=6, eos_token_id=None, pad_token_id=0
    )
    with torch.no_grad():
        ref = model.generate(
            torch.as_tensor(tokens), attention_mask=torch.as_tensor(mask), generation_config=gen
        ).numpy()[:, tokens.shape[1] :]
    positions = np.where(mask, np.cumsum(mask, axis=1) - 1, -1)
    got = beam_search(
        params, {"tokens": tokens, "positions": positions}, cfg=cfg, num_beams=4, max_new_tokens=6
    )
    np.testing.assert_array_equal(got, ref)
