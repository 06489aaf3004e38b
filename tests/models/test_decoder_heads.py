"""Decoder task heads against Hugging Face's ``LlamaForSequenceClassification`` and
``LlamaForTokenClassification`` (tiny random float32 models), and the value head's formula."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llmzoo.hf
from llmzoo.models import decoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PAD = 0


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random LlamaForCausalLM, saved, and the llmzoo config and params loaded from it."""
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=PAD, bos_token_id=None, eos_token_id=None, num_labels=3,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("llama_base")
    transformers.LlamaForCausalLM(hf_cfg).eval().save_pretrained(path)
    cfg, params = llmzoo.hf.load(str(path))
    return hf_cfg, path, cfg, params


def _batch():
    """Right-padded rows of lengths 11, 7 and 16 (ids never the pad id)."""
    rng = np.random.default_rng(0)
    lengths = np.array([11, 7, 16])
    tokens = rng.integers(1, 97, size=(3, 16))
    mask = (np.arange(16) < lengths[:, None]).astype(np.int64)
    return np.where(mask == 1, tokens, PAD), mask


def _hf_head_model(cls_name, hf_cfg, path):
    """The HF task model with the base weights of ``path`` and a random head."""
    torch.manual_seed(1)
    model = getattr(transformers, cls_name)(hf_cfg).eval()
    causal = transformers.LlamaForCausalLM.from_pretrained(path)
    missing, _ = model.load_state_dict(causal.state_dict(), strict=False)
    assert all(k.startswith("score.") for k in missing), missing
    return model


@pytest.mark.parametrize("head", ["sequence_classification", "token_classification"])
def test_heads_match_hugging_face(base, head):
    hf_cfg, path, cfg, params = base
    cls_name = {"sequence_classification": "LlamaForSequenceClassification",
                "token_classification": "LlamaForTokenClassification"}[head]  # fmt: skip
    model = _hf_head_model(cls_name, hf_cfg, path)
    tokens, mask = _batch()
    with torch.no_grad():
        ref = model(
            input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)
        ).logits.numpy()
    cfg = dataclasses.replace(cfg, head=head, num_labels=3)
    params = dict(params)
    params.pop("lm_head", None)
    params["score"] = {"w": jnp.asarray(model.score.weight.detach().numpy().T)}
    if head == "token_classification":
        params["score"]["b"] = jnp.asarray(model.score.bias.detach().numpy())
    assert jax.tree.structure(params) == jax.tree.structure(decoder.param_specs(cfg))
    batch = {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(mask)}
    got = np.asarray(decoder.apply(params, batch, cfg=cfg)["logits"])
    assert got.shape == ref.shape
    if head == "token_classification":
        got, ref = got[mask == 1], ref[mask == 1]
    assert np.abs(got - ref).max() < 1e-4


def test_value_head_reads_the_final_normed_states(base):
    _, _, cfg, params = base
    cfg = dataclasses.replace(cfg, value_head=True)
    params = dict(params)
    params["value_head"] = {
        "w": np.random.default_rng(3).standard_normal((cfg.d_model, 1), np.float32),
        "b": jnp.array([0.25]),
    }
    tokens, mask = _batch()
    out = decoder.apply(params, {"tokens": jnp.asarray(tokens)}, cfg=cfg)
    h = np.asarray(out["final_hidden"])
    want = h @ np.asarray(params["value_head"]["w"])[:, 0] + 0.25
    assert out["values"].shape == tokens.shape
    np.testing.assert_allclose(np.asarray(out["values"]), want, rtol=1e-5, atol=1e-5)
    # the LM logits are the final-normed states times the (tied or untied) head
    w = params["lm_head"]["w"] if "lm_head" in params else params["embed"]["table"].T
    np.testing.assert_allclose(np.asarray(out["logits"]), h @ np.asarray(w), rtol=1e-4, atol=1e-4)


def test_head_without_segment_ids_pools_the_last_position():
    idx = decoder.last_real_index(None, 5, 2)
    assert idx.tolist() == [4, 4]
    seg = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    assert decoder.last_real_index(seg, 5, 3).tolist() == [1, 4, 4]
