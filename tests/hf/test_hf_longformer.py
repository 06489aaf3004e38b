"""Longformer against transformers, both directions, and its banded attention against a dense one.

A tiny random ``LongformerModel`` / ``LongformerForMaskedLM`` (every parameter re-randomised,
float32) with windows 8 and 12 (one per layer), run on a right-padded batch of 37, 29 and 24
tokens (transformers pads to a multiple of 12 inside) with a few global tokens per row. Each case
prints one parity line (``pytest -s``): hf->llmzoo within 1e-4, llmzoo->hf within 1e-5.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llmzoo.hf
from llmzoo.errors import CheckpointError, ConfigError, DataError
from llmzoo.hf.families import config_from_hf, config_to_hf
from llmzoo.layers import longformer
from llmzoo.models import encoder
from llmzoo.params import param_count
from llmzoo.presets import get_model_preset

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 96
LENGTHS = (37, 29, 24)
GLOBAL = ((0,), (0, 5, 17), (0, 23))  # token 5 sits inside token 0's window
WINDOWS = [8, 12]


def build(head: str, seed: int = 0):
    config = transformers.LongformerConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=80,
        max_position_embeddings=42,
        pad_token_id=1,
        type_vocab_size=2,
        attention_window=WINDOWS,
        layer_norm_eps=1e-6,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    cls = {"none": "LongformerModel", "mlm": "LongformerForMaskedLM"}[head]
    model = getattr(transformers, cls)._from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.1 * torch.randn_like(p)
            is_scale = p.ndim == 1 and ("LayerNorm" in name or "layer_norm" in name)
            p.copy_(1.0 + noise if is_scale and name.endswith("weight") else noise)
    return model.eval()


def batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    t = max(LENGTHS)
    mask = (np.arange(t)[None, :] < np.asarray(LENGTHS)[:, None]).astype(np.int64)
    tokens = np.where(mask, rng.integers(3, VOCAB, (len(LENGTHS), t)), 1)
    glob = np.zeros_like(mask)
    for row, cols in enumerate(GLOBAL):
        glob[row, list(cols)] = 1
    types = rng.integers(0, 2, tokens.shape) * mask
    return dict(tokens=tokens, mask=mask, glob=glob, types=types)


def hf_outputs(model, b: dict) -> dict:
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(b["tokens"]),
            attention_mask=torch.as_tensor(b["mask"]),
            global_attention_mask=torch.as_tensor(b["glob"]),
            token_type_ids=torch.as_tensor(b["types"]),
            output_hidden_states=True,
        )
    got = {"hidden": out.hidden_states[-1]}
    if getattr(out, "logits", None) is not None:
        got["logits"] = out.logits
    if getattr(out, "pooler_output", None) is not None:
        got["pooled"] = out.pooler_output
    return {k: v.float().numpy() for k, v in got.items()}


_apply = jax.jit(encoder.apply, static_argnames=("cfg", "return_hidden"))


def llmzoo_outputs(params, cfg, b: dict) -> dict:
    batch_ = dict(
        tokens=b["tokens"], segment_ids=b["mask"], global_mask=b["glob"], token_type_ids=b["types"]
    )
    encoder.check_batch(batch_, cfg)
    out = _apply(params, jax.tree.map(jnp.asarray, batch_), cfg=cfg)
    return {k: np.asarray(v) for k, v in out.items()}


def max_diffs(got: dict, want: dict, mask: np.ndarray) -> dict:
    keep = mask.astype(bool)
    out = {}
    for key, ref in want.items():
        a = got[key]
        assert a.shape == ref.shape, (key, a.shape, ref.shape)
        if a.ndim >= 2 and a.shape[:2] == keep.shape:
            a, ref = a[keep], ref[keep]
        out[key] = float(np.abs(a - ref).max())
    return out


def _fmt(d: dict) -> str:
    return " ".join(f"{k}={v:.1e}" for k, v in sorted(d.items()))


@pytest.mark.parametrize("head", ["mlm", "none"])
def test_parity_both_ways(head, tmp_path):
    model = build(head)
    model.save_pretrained(tmp_path / "hf")
    cfg, params = llmzoo.hf.load(tmp_path / "hf")
    assert (cfg.family, cfg.head, cfg.attention_window) == ("longformer", head, tuple(WINDOWS))
    b = batch()
    want = hf_outputs(model, b)
    forward = max_diffs(llmzoo_outputs(params, cfg, b), want, b["mask"])

    llmzoo.hf.save(tmp_path / "back", cfg, params)
    reloaded, info = type(model).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    back = max_diffs(hf_outputs(reloaded.eval(), b), want, b["mask"])
    assert llmzoo.hf.load(tmp_path / "back")[0] == cfg
    print(f"\nparity longformer {head:5s} hf->llmzoo {_fmt(forward)} | llmzoo->hf {_fmt(back)}")
    assert max(forward.values()) < 1e-4, forward
    assert max(back.values()) < 1e-5, back

    if head == "mlm":  # the window and the global tokens both matter at these lengths
        wide = llmzoo_outputs(params, dataclasses.replace(cfg, attention_window=64), b)
        assert max_diffs(wide, want, b["mask"])["hidden"] > 1e-3
        b_local = dict(b, glob=np.zeros_like(b["glob"]))
        assert max_diffs(llmzoo_outputs(params, cfg, b_local), want, b["mask"])["hidden"] > 1e-3


@functools.partial(jax.jit, static_argnames="window")
def _banded_and_dense(params, gparams, x, segment, glob, window):
    lp = longformer.plan(segment, glob, (window, 2 * window), 4).at_layer(0)
    return longformer.attend(params, gparams, x, lp), longformer.dense_reference(
        params, gparams, x, lp
    )


@pytest.mark.parametrize("t,window", [(37, 8), (5, 12)])
def test_banded_attention_equals_dense_reference(t, window):
    b, d, n = 3, 16, 2
    rng = np.random.default_rng(t)  # numpy: no random program to compile per shape
    normal = lambda shape: rng.standard_normal(shape, np.float32)  # noqa: E731
    specs = encoder.attn_lib.attention_specs(d, n, n, d // n, qkv_bias=True)
    params = {k: normal(s.shape) * 0.5 for k, s in specs.items()}
    gspecs = longformer.global_specs(d, n, d // n)
    gparams = {k: normal(s.shape) * 0.5 for k, s in gspecs.items()}
    x = normal((b, t, d))
    pos = np.arange(t)
    segment = np.stack([pos < t, pos < t - 3, 1 + (pos >= t // 2)]).astype(np.int32)  # pad, pack
    glob = np.zeros((b, t), np.int32)
    glob[0, 0] = glob[1, [1, t - 1]] = glob[2, [0, t // 2, t - 1]] = 1  # row 1: a padding "global"
    real = segment != 0
    for g in (glob, None):
        got, want = _banded_and_dense(params, gparams, x, segment, g, window)
        err = float(jnp.abs(got - want)[real].max())
        print(f"\nbanded vs dense T={t} window={window} global={g is not None}: {err:.1e}")
        assert err < 1e-5, (t, window, g is None, err)
        assert float(jnp.abs(got)[~real].max(initial=0.0)) == 0.0  # padding queries: output 0


@pytest.mark.parametrize("window", [7, -2, 0, (8, 9)])
def test_odd_window_is_a_one_line_config_error(window):
    base = get_model_preset("longformer-tiny")
    with pytest.raises(ConfigError, match=r"model\.attention_window") as e:
        dataclasses.replace(base, attention_window=window)
    assert "\n" not in str(e.value)


def test_bad_inputs_are_refused():
    cfg = get_model_preset("longformer-tiny")
    with pytest.raises(ConfigError, match="model.attention_window has 3 entries"):
        dataclasses.replace(cfg, attention_window=(8, 8, 8))
    tokens = np.full((1, 20), 5)
    few = dataclasses.replace(cfg, max_global_tokens=8)
    with pytest.raises(DataError, match="model.max_global_tokens=8"):
        encoder.check_batch(dict(tokens=tokens, global_mask=np.ones_like(tokens)), few)
    with pytest.raises(DataError, match="needs Longformer"):
        encoder.check_batch(dict(tokens=tokens, global_mask=tokens), get_model_preset("bert-tiny"))
    with pytest.raises(ConfigError, match="model.attention_window=None"):
        config_to_hf(dataclasses.replace(cfg, attention_window=None))
    with pytest.raises(CheckpointError, match="LongformerForQuestionAnswering"):
        config_from_hf(
            dict(model_type="longformer", architectures=["LongformerForQuestionAnswering"])
        )


def test_preset_runs_and_round_trips_its_config():
    cfg = get_model_preset("longformer-tiny")
    assert config_from_hf(config_to_hf(cfg)) == cfg
    base = dataclasses.replace(get_model_preset("longformer-base-4096"), head="none", pooler=True)
    assert param_count(encoder.param_specs(base)) / 1e6 == pytest.approx(149, rel=0.01)
    specs = encoder.param_specs(cfg)
    assert specs["layers"]["global_attn"]["wq"].shape == (cfg.n_layers, 64, 4, 16)
