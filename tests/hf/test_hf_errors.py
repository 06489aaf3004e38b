"""Bad checkpoints fail with one-line errors that name the problem and the fix."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

import llmzoo.hf
from llmzoo.errors import CheckpointError, ConfigError
from llmzoo.hf.safetensors_io import SafetensorsDir, write_file
from llmzoo.models import decoder
from llmzoo.presets import get_model_preset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved llama-tiny checkpoint (small vocab) and its config/params."""
    import jax

    cfg = dataclasses.replace(get_model_preset("llama-tiny"), vocab_size=64, n_layers=1)
    params = decoder.init(jax.random.key(0), cfg)
    path = tmp_path_factory.mktemp("tiny")
    llmzoo.hf.save(path, cfg, params)
    return cfg, params, str(path)


def copy_dir(src, dst, *, drop=(), config=None):
    """Copies a checkpoint, dropping tensors and patching config.json keys."""
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "config.json")) as f:
        hf = json.load(f) | (config or {})
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(hf, f)
    with SafetensorsDir(src) as st:
        arrays = {n: st.read(n) for n in st.names if n not in drop}
    write_file(
        os.path.join(dst, "model.safetensors"),
        [(n, a.shape, a.dtype, lambda a=a: a) for n, a in arrays.items()],
    )
    return str(dst)


def error(fn, cls=CheckpointError) -> str:
    with pytest.raises(cls) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_unsupported_model_type_lists_supported(tiny, tmp_path):
    path = copy_dir(tiny[2], tmp_path, config={"model_type": "xlnet"})
    msg = error(lambda: llmzoo.hf.load(path))
    assert "'xlnet'" in msg
    for family in ("gpt2", "llama", "mistral", "qwen2", "gemma", "gpt_neox"):
        assert family in msg


def test_missing_tensor_is_named(tiny, tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    path = copy_dir(tiny[2], tmp_path, drop=(name,))
    msg = error(lambda: llmzoo.hf.load(path))
    assert name in msg and "[176, 64]" in msg


def test_shape_mismatch_names_tensor_and_both_shapes(tiny, tmp_path):
    path = copy_dir(tiny[2], tmp_path, config={"intermediate_size": 100})
    msg = error(lambda: llmzoo.hf.load(path))
    assert "tensor 'model.layers.0.mlp." in msg
    assert "[64, 176]" in msg and "[64, 100]" in msg  # stored and implied shapes


def test_unexpected_tensor_is_named(tiny, tmp_path):
    path = copy_dir(tiny[2], tmp_path, config={"attention_bias": False})
    with SafetensorsDir(path) as st:
        arrays = {n: st.read(n) for n in st.names}
    arrays["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    write_file(
        os.path.join(path, "model.safetensors"),
        [(n, a.shape, a.dtype, lambda a=a: a) for n, a in arrays.items()],
    )
    assert "q_proj.bias" in error(lambda: llmzoo.hf.load(path))


def test_index_pointing_to_missing_shard(tiny, tmp_path):
    cfg, params, _ = tiny
    llmzoo.hf.save(tmp_path, cfg, params, max_shard_bytes=40_000)
    shards = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert len(shards) > 1 and os.path.exists(tmp_path / "model.safetensors.index.json")
    llmzoo.hf.load(tmp_path)  # intact: loads
    os.remove(tmp_path / shards[-1])
    msg = error(lambda: llmzoo.hf.load(tmp_path))
    assert shards[-1] in msg and "missing" in msg


def test_pickle_only_checkpoint_is_refused(tiny, tmp_path):
    with open(os.path.join(tiny[2], "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    msg = error(lambda: llmzoo.hf.load(tmp_path))
    assert "safetensors only" in msg and "pytorch_model.bin" in msg


def test_missing_directory_and_config(tmp_path):
    assert "not a directory" in error(lambda: llmzoo.hf.load(tmp_path / "nope"))
    assert "config.json" in error(lambda: llmzoo.hf.load(tmp_path))


def test_truncated_file(tiny, tmp_path):
    path = copy_dir(tiny[2], tmp_path)
    file = os.path.join(path, "model.safetensors")
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) - 100)
    assert "truncated" in error(lambda: llmzoo.hf.load(path))


def test_dynamic_rope_is_rejected(tiny, tmp_path):
    rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    path = copy_dir(tiny[2], tmp_path, config={"rope_parameters": rope})
    msg = error(lambda: llmzoo.hf.load(path))
    assert "'dynamic'" in msg and "llama3" in msg


def test_qwen2_mixed_sliding_layers_rejected():
    from llmzoo.hf.families import config_from_hf

    hf = dict(
        model_type="qwen2", vocab_size=64, hidden_size=64, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=128, use_sliding_window=True,
        sliding_window=8, max_window_layers=2,
    )  # fmt: skip
    assert "max_window_layers" in error(lambda: config_from_hf(hf))
    assert config_from_hf(hf | {"use_sliding_window": False}).sliding_window is None
    assert config_from_hf(hf | {"max_window_layers": 0}).sliding_window == 8


def test_save_refuses_what_the_family_cannot_express(tiny, tmp_path):
    cfg, params, _ = tiny
    bad = dataclasses.replace(cfg, sliding_window=16)  # Llama has no sliding window
    msg = error(lambda: llmzoo.hf.save(tmp_path, bad, params), ConfigError)
    assert "model.sliding_window=16" in msg
    msg = error(lambda: llmzoo.hf.save(tmp_path, dataclasses.replace(cfg, d_ff=99), params))
    assert "layers/mlp/w_down" in msg and "[1, 176, 64]" in msg and "[1, 99, 64]" in msg
