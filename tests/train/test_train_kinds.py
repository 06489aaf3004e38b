"""One train step for every kind: a decoder, an encoder and a seq2seq model through `llmzoo train`.

Each objective trains through the same step, loop and checkpoints, and resumes bit-exactly after
``--stop-at`` (the corruption of MLM, span corruption and denoising is drawn per element from the
Grain seed, so the resumed run sees the same masks).
"""

import json
import os

import pytest

from llmzoo.cli import main


def _data_args(data_dir):
    return [
        f"data.data_dir={data_dir}",
        f"data.tokenizer={data_dir}/sp512.model",
        "data.vocab_size=512",
        "seq_len=32",
        "batch_size=8",
        "eval_batches=2",
        "log_every=1",
        "optim.warmup_steps=2",
    ]


KINDS = {
    "encoder_mlm": [
        "objective.name=mlm",
        "model.preset=bert-tiny",
        "model.vocab_size=513",  # one id past the tokenizer for [MASK]
        "model.d_model=32",
        "model.d_ff=64",
        "model.max_seq_len=64",
    ],
    "seq2seq_span": [
        "objective.name=span_corruption",
        "model.preset=t5-tiny",
        "model.vocab_size=528",  # sentinels take the top ids
        "model.d_model=32",
        "model.head_dim=8",
        "model.d_ff=64",
        "model.eos_id=3",
    ],
    "seq2seq_denoise": [
        "objective.name=denoising",
        "model.preset=bart-tiny",
        "model.vocab_size=513",
        "model.d_model=32",
        "model.d_ff=64",
        "model.max_seq_len=64",
        "model.pad_id=0",
        "model.eos_id=3",
        "model.decoder_start_id=3",
    ],
}


def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(ln) for ln in f]


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in _records(run_dir) if "loss" in r}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kinds_data")


@pytest.mark.parametrize("name", sorted(KINDS))
def test_trains_and_resumes_bit_exactly(name, data_dir, tmp_path, capsys):
    args = ["train", "--no-progress", *_data_args(data_dir), *KINDS[name]]
    args += ["steps=6", "eval_every=3", "ckpt_every=3"]
    assert main([*args, f"run_dir={tmp_path}/straight"]) == 0
    straight = _losses(tmp_path / "straight")
    assert sorted(straight) == list(range(1, 7))
    assert straight[6] < straight[1]
    evals = [r for r in _records(tmp_path / "straight") if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6] and "val_accuracy" in evals[-1]

    assert main([*args, f"run_dir={tmp_path}/resumed", "--stop-at", "3"]) == 0
    assert max(_losses(tmp_path / "resumed")) == 3
    capsys.readouterr()
    assert main([*args, f"run_dir={tmp_path}/resumed"]) == 0
    assert "resumed from step 3" in capsys.readouterr().out
    assert _losses(tmp_path / "resumed") == straight  # exact float equality, every step

    # llmzoo eval reports the objective's own metrics, on the same examples as training
    assert main(["eval", "--run", str(tmp_path / "resumed")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["objective"] == KINDS[name][0].split("=")[1] and result["step"] == 6
    assert result["loss"] == pytest.approx(evals[-1]["val_loss"], rel=1e-5)
    assert 0.0 <= result["accuracy"] <= 1.0
    if name.startswith("seq2seq"):  # greedy and beam decoding from the trained run
        for extra in ([], ["--num-beams", "3"]):
            run = ["generate", "--run", str(tmp_path / "resumed"), "--prompt", "The "]
            assert main([*run, "--max-new-tokens", "4", *extra]) == 0


@pytest.mark.slow
def test_mlm_beats_the_majority_baseline(data_dir, tmp_path, capsys):
    """A short masked-LM run predicts masked tokens far better than always guessing the most
    frequent one (and beats the unigram cross-entropy), so the encoder uses its context."""
    args = [
        *_data_args(data_dir),
        *KINDS["encoder_mlm"][:3],
        "model.dropout=0.0",
        "seq_len=64",
        "batch_size=32",
        "steps=300",
        "eval_every=300",
        "eval_batches=4",
        "log_every=50",
        "optim.lr=3e-3",
        "optim.warmup_steps=30",
    ]
    assert main(["train", "--no-progress", *args, f"run_dir={tmp_path}/mlm"]) == 0
    out = capsys.readouterr().out
    figures = dict(
        line.rsplit(": ", 1)
        for line in out.splitlines()
        if ": " in line and "directory" not in line
    )
    accuracy = float(figures["masked-token accuracy"])
    majority = float(figures["always predicting the most frequent token"])
    val_loss = float(figures["final validation loss"].split()[0])
    unigram = float(figures["unigram entropy of the validation tokens"].split()[0])
    print(f"MLM accuracy {accuracy:.4f}, majority baseline {majority:.4f}")
    assert accuracy > 2 * majority
    assert val_loss < unigram
