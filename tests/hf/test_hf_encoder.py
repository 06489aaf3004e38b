"""BERT, RoBERTa, ALBERT and DeBERTa-v2 against transformers: every head, both directions.

Tiny random transformers encoders, every parameter re-randomised (norm scales near 1, biases
non-zero), configs deliberately unlike the presets, run on a right-padded batch with an attention
mask and token types. Each case prints one parity line (``pytest -s``): the max abs difference of
each output from transformers to llmzoo (tolerance 1e-4, real tokens only) and after
``llmzoo.hf.save`` -> ``from_pretrained`` (tolerance 1e-5).

``deberta``: the DeBERTa-v3 switches (shared keys, p2c + c2p, log buckets reached at T = 12,
relative-table LayerNorm, no absolute positions). ``deberta_sep``: separate position projections,
absolute positions too, raw distances clipped at the span, factorised embeddings (E != D).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llmzoo.hf
from llmzoo.errors import CheckpointError, ConfigError
from llmzoo.hf.families import config_from_hf, config_to_hf
from llmzoo.models import encoder
from llmzoo.presets import get_model_preset

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 96
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=80,
    max_position_embeddings=40,
    layer_norm_eps=1e-6,
)
# name -> (config class, kwargs, class prefix)
FAMILIES = {
    "bert": ("BertConfig", dict(SMALL, type_vocab_size=3), "Bert"),
    # relu in the MLP: the MLM head must still use gelu; pad id 1 offsets positions by 2.
    "roberta": (
        "RobertaConfig",
        dict(
            SMALL, max_position_embeddings=42, pad_token_id=1, type_vocab_size=1, hidden_act="relu"
        ),
        "Roberta",
    ),
    "albert": (
        "AlbertConfig",
        dict(SMALL, embedding_size=24, num_hidden_layers=3, hidden_act="gelu_new"),
        "Albert",
    ),
    # DeBERTa-v3 switches: shared keys, log buckets reached by T=12 (mid 4), relative-table norm.
    "deberta": (
        "DebertaV2Config",
        dict(
            SMALL,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            position_buckets=8,
            max_relative_positions=32,
            share_att_key=True,
            position_biased_input=False,
            norm_rel_ebd="layer_norm",
        ),
        "DebertaV2",
    ),
    # Separate position projections, absolute positions too, raw distances clipped at 6, E != D.
    "deberta_sep": (
        "DebertaV2Config",
        dict(
            SMALL,
            relative_attention=True,
            pos_att_type=["c2p", "p2c"],
            max_relative_positions=6,
            share_att_key=False,
            position_biased_input=True,
            type_vocab_size=2,
            embedding_size=32,
            pooler_hidden_act="tanh",
        ),
        "DebertaV2",
    ),
}
HEAD_SUFFIX = {
    "none": "Model",
    "mlm": "ForMaskedLM",
    "pretraining": "ForPreTraining",
    "sequence_classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification",
}
NUM_LABELS = 3
LENGTHS = (12, 9, 5)


def build(family: str, head: str, seed: int = 0):
    """A tiny transformers encoder with every parameter randomised."""
    cls_name, kwargs, prefix = FAMILIES[family]
    kwargs = dict(kwargs, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if head in ("sequence_classification", "token_classification"):
        kwargs["num_labels"] = NUM_LABELS
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, prefix + HEAD_SUFFIX[head])._from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.1 * torch.randn_like(p)
            is_scale = p.ndim == 1 and ("LayerNorm" in name or "layer_norm" in name)
            p.copy_(1.0 + noise if is_scale and name.endswith("weight") else noise)
    return model.eval()


def batch(pad_id: int, type_vocab: int, seed: int = 0) -> dict:
    """A right-padded numpy batch: tokens (never the pad id inside), mask, token types."""
    rng = np.random.default_rng(seed)
    t = max(LENGTHS)
    mask = (np.arange(t)[None, :] < np.asarray(LENGTHS)[:, None]).astype(np.int64)
    tokens = np.where(mask, rng.integers(3, VOCAB, (len(LENGTHS), t)), pad_id)
    types = rng.integers(0, max(type_vocab, 1), tokens.shape) * mask
    return dict(tokens=tokens, mask=mask, types=types)


def hf_outputs(model, b: dict) -> dict:
    """transformers' outputs under llmzoo's names."""
    kwargs = dict(attention_mask=torch.as_tensor(b["mask"]), output_hidden_states=True)
    if model.config.type_vocab_size:
        kwargs["token_type_ids"] = torch.as_tensor(b["types"])
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(b["tokens"]), **kwargs)
    got = {"hidden": out.hidden_states[-1]}
    for ours, theirs in (
        ("logits", "logits"),
        ("logits", "prediction_logits"),
        ("pair_logits", "seq_relationship_logits"),
        ("pair_logits", "sop_logits"),
        ("pooled", "pooler_output"),
    ):
        if getattr(out, theirs, None) is not None:
            got[ours] = out[theirs]
    return {k: v.float().numpy() for k, v in got.items()}


_apply = jax.jit(encoder.apply, static_argnames=("cfg", "return_hidden"))


def llmzoo_outputs(params, cfg, b: dict) -> dict:
    batch_ = dict(tokens=b["tokens"], segment_ids=b["mask"], token_type_ids=b["types"])
    if cfg.type_vocab_size == 0:
        del batch_["token_type_ids"]
    encoder.check_batch(batch_, cfg)
    out = _apply(params, jax.tree.map(jnp.asarray, batch_), cfg=cfg)
    return {k: np.asarray(v) for k, v in out.items()}


def max_diffs(got: dict, want: dict, mask: np.ndarray) -> dict:
    """Max abs difference per output; per-token outputs compare the real (unpadded) tokens."""
    keep = mask.astype(bool)
    out = {}
    for key, ref in want.items():
        a = got[key]
        assert a.shape == ref.shape, (key, a.shape, ref.shape)
        if a.ndim >= 2 and a.shape[:2] == keep.shape:
            a, ref = a[keep], ref[keep]
        out[key] = float(np.abs(a - ref).max())
    return out


def check_parity(family: str, head: str, tmp_path) -> tuple[dict, dict]:
    """HF -> llmzoo and llmzoo -> HF; returns the two dicts of max abs differences."""
    model = build(family, head)
    hf_dir, back_dir = tmp_path / "hf", tmp_path / "back"
    model.save_pretrained(hf_dir)
    cfg, params = llmzoo.hf.load(hf_dir)
    assert cfg.head == head and cfg.family == family.split("_")[0].replace("deberta", "deberta_v2")
    b = batch(cfg.pad_id, cfg.type_vocab_size)
    want = hf_outputs(model, b)
    forward = max_diffs(llmzoo_outputs(params, cfg, b), want, b["mask"])

    llmzoo.hf.save(back_dir, cfg, params)
    reloaded, info = type(model).from_pretrained(
        back_dir, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    back = max_diffs(hf_outputs(reloaded.eval(), b), want, b["mask"])
    cfg2, _ = llmzoo.hf.load(back_dir)
    assert cfg2 == dataclasses.replace(cfg, init_std=cfg2.init_std)
    print(f"\nparity {family:11s} {head:24s} hf->llmzoo {_fmt(forward)} | llmzoo->hf {_fmt(back)}")
    return forward, back


def _fmt(d: dict) -> str:
    return " ".join(f"{k}={v:.1e}" for k, v in sorted(d.items()))


CASES = [
    ("bert", "mlm"),
    ("bert", "sequence_classification"),
    ("bert", "token_classification"),
    ("bert", "pretraining"),
    ("bert", "none"),
    ("roberta", "mlm"),
    ("roberta", "sequence_classification"),
    ("albert", "mlm"),
    ("albert", "pretraining"),
    ("albert", "token_classification"),
    ("deberta", "mlm"),
    ("deberta", "sequence_classification"),
    ("deberta", "none"),
    ("deberta_sep", "mlm"),
    ("deberta_sep", "token_classification"),
    ("deberta_sep", "sequence_classification"),
]


@pytest.mark.parametrize("family,head", CASES)
def test_parity_both_ways(family, head, tmp_path):
    forward, back = check_parity(family, head, tmp_path)
    assert max(forward.values()) < 1e-4, forward
    assert max(back.values()) < 1e-5, back


def test_relative_attention_and_log_buckets_are_exercised(tmp_path):
    """Without its relative terms, or with raw distances, the DeBERTa model would differ."""
    model = build("deberta", "none")
    model.save_pretrained(tmp_path)
    cfg, params = llmzoo.hf.load(tmp_path)
    b = batch(cfg.pad_id, cfg.type_vocab_size)
    ref = hf_outputs(model, b)
    # Same table size (2R = 16) either way: only the bucketing of distances >= 8 changes.
    for change in (
        dict(relative_attention=False),
        dict(position_buckets=0, max_relative_positions=8),
    ):
        got = llmzoo_outputs(params, dataclasses.replace(cfg, **change), b)
        assert max_diffs(got, ref, b["mask"])["hidden"] > 1e-3, change


BASE = dict(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=80)  # fmt: skip


@pytest.mark.parametrize(
    "hf,match",
    [
        (dict(model_type="albert", num_hidden_groups=2), "albert num_hidden_groups=2"),
        (dict(model_type="albert", inner_group_num=2), "albert inner_group_num=2"),
        (dict(model_type="deberta-v2", conv_kernel_size=3), "deberta-v2 conv_kernel_size=3"),
        (
            dict(model_type="deberta-v2", legacy=False, architectures=["DebertaV2ForMaskedLM"]),
            "deberta-v2 legacy=False",
        ),
        (dict(model_type="bert", position_embedding_type="relative_key"), "relative_key"),
        (dict(model_type="bert", is_decoder=True), "is_decoder"),
        (
            dict(model_type="bert", tie_word_embeddings=False, architectures=["BertForMaskedLM"]),
            "tie_word_embeddings=false",
        ),
        (dict(model_type="bert", architectures=["BertForQuestionAnswering"]), "BertForQuestion"),
        (dict(model_type="roberta", architectures=["RobertaForPreTraining"]), "RobertaForPre"),
        (dict(model_type="bert", hidden_act="swish"), "activation 'swish'"),
    ],
)
def test_unsupported_checkpoints_are_refused_in_one_line(hf, match):
    with pytest.raises(CheckpointError, match=match) as e:
        config_from_hf({**BASE, **hf})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "preset,changes,match",
    [
        ("roberta-tiny", dict(head="pretraining", pooler=True), "head='pretraining'"),
        ("bert-tiny", dict(share_layers=True), "model.share_layers=True"),
        ("bert-tiny", dict(type_vocab_size=0), "model.type_vocab_size=0"),
        ("roberta-tiny", dict(position_offset=0), "model.position_offset=0"),
        ("deberta_v2-tiny", dict(embed_norm_after_proj=False, embed_dim=32), "embed_norm_after"),
    ],
)
def test_configs_huggingface_cannot_express_are_refused(preset, changes, match):
    cfg = dataclasses.replace(get_model_preset(preset), **changes)
    with pytest.raises(ConfigError, match=match):
        config_to_hf(cfg)
