"""End-to-end training through the CLI: exact resume, fallback past a corrupt checkpoint."""

import json
import os
import subprocess
import sys

import pytest


def run_cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "llmzoo", *args], capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"llmzoo {args} failed:\n{proc.stderr[-3000:]}")
    return proc


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(ln) for ln in f]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_run_args):
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    args = [*tiny_run_args, f"run_dir={run_dir}", "steps=8", "eval_every=4", "ckpt_every=4"]
    proc = run_cli("train", "--no-progress", *args)
    return run_dir, args, proc


def test_training_reduces_loss_and_reports_baseline(straight_run):
    run_dir, _, proc = straight_run
    ls = losses(run_dir)
    assert sorted(ls) == list(range(1, 9))
    assert ls[8] < ls[1]
    assert "unigram entropy" in proc.stdout and "final validation loss" in proc.stdout
    assert os.path.exists(os.path.join(run_dir, "tokenizer.model"))
    assert os.path.exists(os.path.join(run_dir, "config.yaml"))


def test_resume_is_bitwise_exact(straight_run, tmp_path):
    """2N steps straight == N steps, process exit, N resumed steps (bitwise on CPU)."""
    run_dir, args, _ = straight_run
    resumed = tmp_path / "resumed"
    args = [a for a in args if not a.startswith("run_dir=")] + [f"run_dir={resumed}"]
    run_cli("train", "--no-progress", "--stop-at", "4", *args)
    assert max(losses(resumed)) == 4
    proc = run_cli("train", "--no-progress", *args)
    assert "resumed from step 4" in proc.stdout
    assert losses(resumed) == losses(run_dir)  # exact float equality, every step


def test_corrupt_newest_checkpoint_falls_back(straight_run, tmp_path):
    import shutil

    run_dir, args, _ = straight_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    newest = copy / "checkpoints" / "8"
    assert newest.is_dir()
    n = 0
    for root, _, files in os.walk(newest / "params"):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(max(os.path.getsize(path) // 3, 1))
            n += 1
    assert n > 0
    args = [a for a in args if not a.startswith(("run_dir=", "steps="))]
    proc = run_cli("train", "--no-progress", *args, f"run_dir={copy}", "steps=10")
    assert "checkpoint at step 8 is unreadable" in proc.stderr
    assert "resumed from step 4" in proc.stdout
    assert (copy / "corrupt_checkpoints").is_dir()  # kept for inspection, not deleted
    assert max(losses(copy)) == 10


def test_generate_from_run(straight_run):
    run_dir, _, _ = straight_run
    proc = run_cli("generate", "--run", str(run_dir), "--prompt", "def ", "--max-new-tokens", "5")
    assert proc.stdout.startswith("def ")
    greedy_again = run_cli(
        "generate", "--run", str(run_dir), "--prompt", "def ", "--max-new-tokens", "5"
    )
    assert proc.stdout == greedy_again.stdout


def test_eval_command(straight_run):
    run_dir, _, _ = straight_run
    proc = run_cli("eval", "--run", str(run_dir))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step"] == 8 and result["tokens"] > 0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        vals = [json.loads(ln)["val_loss"] for ln in f if "val_loss" in ln]
    assert abs(result["loss"] - vals[-1]) < 1e-4


def test_eval_refuses_a_foreign_tokenizer(straight_run, tmp_path):
    import shutil

    from llmzoo.data import train_tokenizer
    from llmzoo.data.pydoc_corpus import pydoc_documents

    run_dir, _, _ = straight_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    texts = list(pydoc_documents().values())[:60]
    train_tokenizer(texts, str(tmp_path / "big"), vocab_size=1024)
    shutil.copy(tmp_path / "big.model", copy / "tokenizer.model")
    proc = run_cli("eval", "--run", str(copy), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "has 1024 tokens but model.vocab_size=512" in proc.stderr.strip().splitlines()[-1]


def test_convert_round_trip_then_finetune_from_converted(straight_run, tmp_path):
    """llmzoo run -> HF safetensors -> llmzoo run generates the same text and fine-tunes."""
    run_dir, args, _ = straight_run
    hf_dir, converted, finetune = tmp_path / "hf", tmp_path / "converted", tmp_path / "ft"
    run_cli("convert", "--run", str(run_dir), "--to-hf", str(hf_dir))
    assert (hf_dir / "model.safetensors").exists() and (hf_dir / "config.json").exists()
    run_cli("convert", "--from-hf", str(hf_dir), "--out", str(converted))
    prompt = ["--prompt", "class ", "--max-new-tokens", "6"]
    original = run_cli("generate", "--run", str(run_dir), *prompt).stdout
    assert run_cli("generate", "--run", str(converted), *prompt).stdout == original

    args = [a for a in args if not a.startswith(("run_dir=", "steps="))]
    proc = run_cli(
        "train", "--no-progress", *args, f"init_from={converted}", f"run_dir={finetune}", "steps=2"
    )
    assert "initialised params from" in proc.stdout
    # the first fine-tuning loss is that of the trained weights, not of a fresh init
    before, after = losses(run_dir)[1], losses(run_dir)[8]
    first = losses(finetune)[1]
    assert abs(first - after) < abs(first - before)
