"""`llmzoo embeddings train` and `llmzoo embeddings neighbours` on the embedded corpus."""

import numpy as np
import pytest

from llmzoo.cli import main
from llmzoo.wordvec import load_word2vec_text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Small word2vec vectors of pydoc_topics, trained once through the CLI."""
    tmp = tmp_path_factory.mktemp("wordvec")
    out = str(tmp / "w2v.txt")
    args = ["--data-dir", str(tmp / "data"), "--dim", "16", "--epochs", "2", "--out", out]
    code = main(["embeddings", "train", "--method", "word2vec", *args])
    return code, out, str(tmp / "data")


def test_train_writes_a_loadable_file(trained):
    code, out, _ = trained
    assert code == 0
    words, vectors = load_word2vec_text(out)
    assert vectors.shape == (len(words), 16) and len(words) > 1000
    assert {"list", "int", "def"} <= set(words)
    assert np.all(np.isfinite(vectors))


def test_glove_through_the_cli(trained, tmp_path, capsys):
    out = str(tmp_path / "glove.txt")
    args = ["--data-dir", trained[2], "--dim", "8", "--epochs", "2", "--out", out, "-k", "3"]
    assert main(["embeddings", "train", "--method", "glove", *args]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    assert sum(line.startswith(("list: ", "int: ", "def: ")) for line in printed.splitlines()) == 3
    assert load_word2vec_text(out)[1].shape[1] == 8


def test_neighbours_command(trained, capsys):
    assert (
        main(["embeddings", "neighbours", "list", "def", "--vectors", trained[1], "-k", "4"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["list", "def"]
    assert all(len(line.split(", ")) == 4 for line in lines)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["neighbours", "zyzzyva"], "word 'zyzzyva' is not in the vocabulary"),
        (["neighbours", "list", "--vectors", "missing.txt"], "'missing.txt' not found"),
        (["train", "--dim", "0"], "word2vec option dim=0 must be a positive number"),
    ],
)
def test_bad_input_is_one_error_line(trained, argv, expected, error_line, capsys):
    capsys.readouterr()
    if argv[0] == "neighbours" and "--vectors" not in argv:
        argv = [*argv, "--vectors", trained[1]]
    assert main(["embeddings", *argv]) == 2
    assert expected in error_line()
    assert capsys.readouterr().out == ""
