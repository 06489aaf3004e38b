"""Encoder presets: published sizes have the published parameter counts and export to HF."""

from __future__ import annotations

import dataclasses

import pytest

from llmzoo.hf.families import config_from_hf, config_to_hf
from llmzoo.models import encoder
from llmzoo.params import param_count
from llmzoo.presets import MODEL_PRESETS, get_model_preset

# Millions of parameters as the model cards state them, counting the base model with its pooler
# (BertModel, RobertaModel; DebertaV2Model has none). albert-base-v2: the 11.8M the Hub shows for
# its checkpoint, which also holds the MLM head.
PUBLISHED = {
    "bert-base-uncased": (110, "none"),
    "bert-large-uncased": (336, "none"),
    "roberta-base": (125, "none"),
    "roberta-large": (355, "none"),
    "albert-base-v2": (11.8, "mlm"),
    "albert-xxlarge-v2": (223, "none"),
    "all-minilm-l6-v2": (22.7, "none"),
    "deberta-v3-small": (142, "none"),
    "deberta-v3-base": (184, "none"),
    "deberta-v3-large": (435, "none"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name):
    millions, head = PUBLISHED[name]
    cfg = get_model_preset(name)
    cfg = dataclasses.replace(cfg, head=head, pooler=cfg.family != "deberta_v2")
    n = param_count(encoder.param_specs(cfg)) / 1e6
    assert n == pytest.approx(millions, rel=0.01)


def test_albert_stores_one_layer():
    cfg = get_model_preset("albert-xxlarge-v2")
    shared = param_count(encoder.param_specs(cfg))
    unshared = param_count(encoder.param_specs(dataclasses.replace(cfg, share_layers=False)))
    per_layer = param_count(encoder.param_specs(cfg)["layers"])
    assert unshared - shared == (cfg.n_layers - 1) * per_layer


def test_every_encoder_family_has_a_tiny_preset_and_presets_export():
    for family in ("bert", "roberta", "albert", "deberta_v2"):
        assert get_model_preset(f"{family}-tiny").family == family
    encoders = {k: v for k, v in MODEL_PRESETS.items() if v.kind == "encoder"}
    assert len(encoders) >= 12
    for name, cfg in encoders.items():
        back = config_from_hf(config_to_hf(cfg))
        assert back == dataclasses.replace(cfg, dropout=back.dropout), name
