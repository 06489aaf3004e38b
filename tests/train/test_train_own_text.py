"""Training on your own text through the CLI: a folder of .txt files and a .jsonl file."""

import json
import os
import subprocess
import sys

import pytest

from llmzoo.cli import main


def _run(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "llmzoo", *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def _topics():
    from pydoc_data.topics import topics

    return sorted(topics.items())


@pytest.fixture
def own_args(tiny_run_args, tmp_path):
    """The tiny run's overrides, with its own data_dir and a tokenizer chosen per dataset."""
    keep = [a for a in tiny_run_args if not a.startswith(("data.tokenizer=", "data.data_dir="))]
    return [*keep, f"data.data_dir={tmp_path / 'cache'}", "eval_every=3", "ckpt_every=3"]


@pytest.mark.slow
def test_folder_of_txt_trains_and_resumes_exactly(tmp_path, own_args):
    folder = tmp_path / "texts"
    (folder / "more").mkdir(parents=True)
    for i, (name, text) in enumerate(_topics()[:30]):
        (folder / ("more" if i % 3 else "") / f"{name}.txt").write_text(text, encoding="utf-8")
    args = [*own_args, f"data.dataset={folder}", "data.txt_documents=paragraph", "steps=6"]
    straight = _run("train", "--no-progress", *args, f"run_dir={tmp_path / 'straight'}")
    assert f"tokenizer on {folder}" in straight.stdout
    resumed = tmp_path / "resumed"
    _run("train", "--no-progress", "--stop-at", "3", *args, f"run_dir={resumed}")
    second = _run("train", "--no-progress", *args, f"run_dir={resumed}")
    assert "resumed from step 3" in second.stdout
    assert "training a" not in second.stdout  # The tokenizer is reused, not retrained.
    straight_losses = _losses(tmp_path / "straight")
    assert sorted(straight_losses) == list(range(1, 7))
    assert _losses(resumed) == straight_losses  # exact float equality, every step


@pytest.mark.slow
def test_jsonl_trains_with_a_tokenizer_trained_on_it(tmp_path, own_args):
    path = tmp_path / "docs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for name, text in _topics()[:40]:
            f.write(json.dumps({"title": name, "body": text}) + "\n")
    tok = tmp_path / "tok.model"
    data = [f"--dataset={path}", "--text-key=body", f"--data-dir={tmp_path / 'cache'}"]
    made = _run("tokenizer", "train", *data, "--vocab-size=512", f"--out={tok}")
    assert f"wrote {tok}" in made.stdout
    run_dir = tmp_path / "run"
    args = [*own_args, f"data.dataset={path}", "data.text_key=body", f"data.tokenizer={tok}"]
    proc = _run("train", "--no-progress", *args, "steps=4", f"run_dir={run_dir}")
    assert "training a" not in proc.stdout
    losses = _losses(run_dir)
    assert sorted(losses) == [1, 2, 3, 4] and losses[4] < losses[1]
    evaluated = _run("eval", "--run", str(run_dir))
    result = json.loads(evaluated.stdout)
    assert result["split"] == "validation" and result["tokens"] > 0


def test_unprepared_tfds_dataset_offline_is_one_line(tmp_path, tiny_run_args, error_line):
    run_dir = tmp_path / "run"
    keep = [a for a in tiny_run_args if not a.startswith("data.data_dir=")]
    args = [*keep, "data.dataset=lm1b", f"data.data_dir={tmp_path / 'cache'}", f"run_dir={run_dir}"]
    assert main(["train", *args]) == 2
    line = error_line()
    assert line.startswith("error: dataset 'lm1b' is not prepared in data.data_dir=")
    assert "llmzoo data build --dataset lm1b --data-dir DIR" in line
    assert not run_dir.exists()


def test_missing_own_text_is_one_line(tmp_path, tiny_run_args, error_line):
    run_dir = tmp_path / "run"
    args = [*tiny_run_args, f"data.dataset={tmp_path}/nothing/*.txt", f"run_dir={run_dir}"]
    assert main(["train", *args]) == 2
    assert "no .txt or .jsonl files match data.dataset=" in error_line()
    assert not run_dir.exists()
