"""Family presets: published sizes have the published parameter counts and export to HF."""

from __future__ import annotations

import pytest

from llmzoo.hf.families import FAMILIES, config_from_hf, config_to_hf
from llmzoo.models import decoder
from llmzoo.params import param_count
from llmzoo.presets import MODEL_PRESETS, get_model_preset

PUBLISHED = {  # billions of parameters, as the model cards state them
    "llama2-7b": 6.74,
    "llama2-13b": 13.02,
    "llama3-8b": 8.03,
    "llama3.2-1b": 1.24,
    "mistral-7b-v0.1": 7.24,
    "qwen2-0.5b": 0.49,
    "qwen2-7b": 7.62,
    "gemma-2b": 2.51,
    "gemma-7b": 8.54,
    "pythia-160m": 0.162,
    "pythia-1b": 1.01,
    "gpt-neox-20b": 20.55,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
    n = param_count(decoder.param_specs(get_model_preset(name))) / 1e9
    assert n == pytest.approx(PUBLISHED[name], rel=0.01)


def test_every_family_has_a_tiny_preset_and_presets_export():
    get_model_preset("gpt2-tiny")  # loads the family modules
    for family in ("llama", "mistral", "qwen2", "gemma", "gpt_neox"):
        assert get_model_preset(f"{family}-tiny").family == family
    for name, cfg in MODEL_PRESETS.items():
        if cfg.family not in FAMILIES:  # llmzoo's own (LSTM, GRU): no Hugging Face model
            continue
        back = config_from_hf(config_to_hf(cfg))
        assert back.family == cfg.family and back.kind == cfg.kind, name
        if cfg.kind != "decoder":
            continue  # the other kinds' presets are checked in their own tests
        assert back.dim_per_head == cfg.dim_per_head and back.kv_heads == cfg.kv_heads, name
