"""``llmzoo convert`` support: Hugging Face directory -> run directory -> Hugging Face directory."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest
from conftest import batch, hf_logits

import llmzoo.hf
from llmzoo import run_dir as checkpoint
from llmzoo.generate import generate
from llmzoo.hf.convert import convert_from_hf, convert_to_hf

transformers = pytest.importorskip("transformers")


def test_gpt2_round_trip_through_a_run_directory(hf_dirs, tmp_path):
    model, path = hf_dirs("gpt2")
    src = tmp_path / "hf_in"
    shutil.copytree(path, src)
    (src / "tokenizer.json").write_text(_word_level_tokenizer())
    (src / "tokenizer_config.json").write_text('{"eos_token": "</s>", "pad_token": "<pad>"}')
    run = convert_from_hf(str(src), str(tmp_path / "run"))

    train_cfg, params, tok_path = checkpoint.read_run(run)
    cfg, want = llmzoo.hf.load(path)
    assert train_cfg.model == cfg and tok_path.endswith("tokenizer.json")
    assert train_cfg.data.tokenizer == tok_path and not train_cfg.data.train_tokenizer
    jax.tree.map(np.testing.assert_array_equal, params, want)
    # The converted run generates like the original.
    assert generate(params, [[1, 2, 3]], cfg=cfg, max_new_tokens=5) == generate(
        want, [[1, 2, 3]], cfg=cfg, max_new_tokens=5
    )

    out = convert_to_hf(run, str(tmp_path / "hf_out"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokens, mask = batch(16, (16, 9))
    keep = mask.astype(bool)
    diff = hf_logits(reloaded, tokens, mask)[keep] - hf_logits(model, tokens, mask)[keep]
    assert np.abs(diff).max() < 1e-5
    assert (tmp_path / "hf_out" / "tokenizer.json").exists()
    assert (reloaded.config.eos_token_id, reloaded.config.pad_token_id) == (1, 0)
    _, exported = llmzoo.hf.load(out)  # and llmzoo reads its own export
    jax.tree.map(np.testing.assert_array_equal, exported, want)


def _word_level_tokenizer() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(100)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "</s>"])
    return tok.to_str()


def test_convert_never_overwrites_a_run_without_force(hf_dirs, tmp_path, capsys):
    import hashlib
    import os

    from llmzoo.cli import main

    _, path = hf_dirs("gpt2")
    src = tmp_path / "hf_in"
    shutil.copytree(path, src)
    (src / "tokenizer.json").write_text(_word_level_tokenizer())
    run = tmp_path / "run"
    run.mkdir()
    (run / "tokenizer.model").write_bytes(b"a trained run's SentencePiece model")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')

    def digest():
        h = hashlib.sha256()
        for root, _, files in sorted(os.walk(run)):
            for name in sorted(files):
                h.update(name.encode() + open(os.path.join(root, name), "rb").read())
        return h.hexdigest()

    before = digest()
    assert main(["convert", "--from-hf", str(src), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "is not empty" in err and "--force" in err
    assert digest() == before  # untouched

    assert main(["convert", "--from-hf", str(src), "--out", str(run), "--force"]) == 0
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "tokenizer.json"]
    assert checkpoint.tokenizer_path(str(run)).endswith("tokenizer.json")  # one tokenizer only
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".converting-")]
