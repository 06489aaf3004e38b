"""Checkpoint I/O details: shards, bfloat16, shardings, and GPT-2's bare-model layout."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import batch, hf_logits

import llmzoo.hf
from llmzoo import sharding
from llmzoo.hf.safetensors_io import SafetensorsDir, write_file
from llmzoo.models import decoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_sharded_save_loads_in_transformers(hf_dirs, tmp_path):
    model, path = hf_dirs("llama")
    cfg, params = llmzoo.hf.load(path)
    llmzoo.hf.save(tmp_path, cfg, params, max_shard_bytes=100_000)
    with open(tmp_path / "model.safetensors.index.json") as f:
        index = json.load(f)
    assert len(set(index["weight_map"].values())) > 2
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens, mask = batch(12, (12, 7))
    keep = mask.astype(bool)
    diff = hf_logits(reloaded, tokens, mask)[keep] - hf_logits(model, tokens, mask)[keep]
    assert np.abs(diff).max() < 1e-5
    _, again = llmzoo.hf.load(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_bfloat16_checkpoints(hf_dirs, tmp_path):
    _, path = hf_dirs("gemma")
    cfg, params = llmzoo.hf.load(path)
    llmzoo.hf.save(tmp_path, cfg, params, dtype=jnp.bfloat16)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["dtype"] == "bfloat16"
    with SafetensorsDir(str(tmp_path)) as st:
        assert {st.dtype(n) for n in st.names} == {np.dtype(ml_dtypes.bfloat16)}
    _, as_f32 = llmzoo.hf.load(tmp_path)  # default: float32 params
    _, as_bf16 = llmzoo.hf.load(tmp_path, dtype=jnp.bfloat16)
    for a, b, ref in zip(
        jax.tree.leaves(as_f32), jax.tree.leaves(as_bf16), jax.tree.leaves(params), strict=True
    ):
        assert a.dtype == jnp.float32 and b.dtype == jnp.bfloat16
        expect = np.asarray(ref).astype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(np.asarray(b), expect)
        np.testing.assert_array_equal(np.asarray(a), expect.astype(np.float32))
    # transformers reads the bf16 files too.
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.dtype == torch.bfloat16


def test_load_straight_onto_shardings(hf_dirs):
    _, path = hf_dirs("qwen2")
    cfg = llmzoo.hf.load_config(path)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    shardings = sharding.param_shardings(decoder.param_specs(cfg), mesh)
    _, placed = llmzoo.hf.load(path, shardings=shardings)
    _, plain = llmzoo.hf.load(path)
    for leaf, want, ref in zip(
        jax.tree.leaves(placed), jax.tree.leaves(shardings), jax.tree.leaves(plain), strict=True
    ):
        assert leaf.sharding == want
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(ref))


def test_gpt2_bare_model_layout_with_buffers(hf_dirs, tmp_path):
    """The published GPT-2 files have no 'transformer.' prefix and carry attn.bias buffers."""
    model, path = hf_dirs("gpt2")
    with SafetensorsDir(path) as st:
        arrays = {n.removeprefix("transformer."): st.read(n) for n in st.names}
    for i in range(model.config.n_layer):
        arrays[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    write_file(
        os.path.join(tmp_path, "model.safetensors"),
        [(n, a.shape, a.dtype, lambda a=a: a) for n, a in arrays.items()],
    )
    with open(os.path.join(path, "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    cfg, params = llmzoo.hf.load(tmp_path)
    tokens, mask = batch(16, (16, 5))
    got = np.asarray(
        decoder.apply(params, {"tokens": jnp.asarray(tokens), "segment_ids": mask}, cfg=cfg)[
            "logits"
        ]
    )
    keep = mask.astype(bool)
    assert np.abs(got[keep] - hf_logits(model, tokens, mask)[keep]).max() < 1e-4
