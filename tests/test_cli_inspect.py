"""``llmzoo plot`` and ``llmzoo inspect``: the PNGs they write, what they show, their errors."""

import json
import sys

import numpy as np
import pytest

from llmzoo import cli_inspect
from llmzoo.cli import main
from llmzoo.viz import curves

image = pytest.importorskip("matplotlib.image")

RUN_A = [
    {"step": 10, "loss": 5.0, "lr": 1e-3, "grad_norm": 2.0},
    {"step": 20, "loss": 4.0, "lr": 2e-3, "grad_norm": 1.5},
    {"step": 20, "val_loss": 4.5, "val_ppl": 90.0},
    {"step": 30, "loss": 3.0, "lr": 1e-3, "grad_norm": 1.0},
    {"step": 30, "val_loss": 3.5},
]
RUN_B = [  # no validation; its lr under another name; a last line cut short by a kill
    {"step": 5, "loss": 6.0, "learning_rate": 3e-4, "grad_norm": 3.0},
    {"step": 15, "loss": 5.5, "learning_rate": 6e-4, "grad_norm": 2.5},
]


def write_run(path, records, tail=""):
    path.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in records)
    (path / "metrics.jsonl").write_text(text + tail)
    return str(path)


def png_shape(path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    return image.imread(str(path)).shape[:2]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the commands return, in order."""
    figures = []
    original = curves.training_curves

    def keep(*args, **kwargs):
        figures.append(original(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(curves, "training_curves", keep)
    return figures


def test_plot_overlays_runs_with_the_files_numbers(tmp_path, capsys, drawn):
    a = write_run(tmp_path / "a", RUN_A)
    b = write_run(tmp_path / "b", RUN_B, tail='{"step": 25, "lo')
    out = tmp_path / "ab.png"
    assert main(["plot", "--run", a, "--run", b, "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert png_shape(out) == (740, 1150)  # 2 x 2 panels of 5 x 3.2 in, plus 1.5 x 1 in
    loss, val, lr, grad = drawn[0].axes
    assert [ln.get_label() for ln in loss.lines] == ["a", "b"]
    np.testing.assert_array_equal(loss.lines[0].get_xydata(), [[10, 5.0], [20, 4.0], [30, 3.0]])
    np.testing.assert_array_equal(loss.lines[1].get_xydata(), [[5, 6.0], [15, 5.5]])
    assert [ln.get_label() for ln in val.lines] == ["a"]  # b has no validation loss
    np.testing.assert_array_equal(val.lines[0].get_xydata(), [[20, 4.5], [30, 3.5]])
    np.testing.assert_array_equal(lr.lines[1].get_ydata(), [3e-4, 6e-4])  # learning_rate
    np.testing.assert_array_equal(grad.lines[0].get_ydata(), [2.0, 1.5, 1.0])
    assert [ax.get_legend().get_texts()[0].get_text() for ax in drawn[0].axes] == ["a"] * 4


def test_plot_default_out_and_chosen_metrics(tmp_path, capsys, drawn):
    a = write_run(tmp_path / "a", RUN_A)
    assert main(["plot", "--run", a, "--metrics", "val_ppl"]) == 0
    assert png_shape(tmp_path / "a" / "curves.png") == (420, 650)  # one 5 x 3.2 in panel
    assert capsys.readouterr().out.startswith(f"wrote {a}/curves.png")
    np.testing.assert_array_equal(drawn[0].axes[0].lines[0].get_ydata(), [90.0])


def test_plot_errors(tmp_path, error_line, monkeypatch):
    a = write_run(tmp_path / "a", RUN_A)
    (tmp_path / "empty").mkdir()
    cases = [
        (["--run", str(tmp_path / "nope")], "does not exist"),
        (["--run", a, "--run", str(tmp_path / "empty")], "has no metrics.jsonl"),
        (["--run", a, "--metrics", "loss,bleu"], "no run has metric 'bleu'"),
    ]
    for args, message in cases:
        assert main(["plot", *args, "--out", str(tmp_path / "x.png")]) == 2
        assert message in error_line()
    assert main(["plot", "--run", a, "--metrics", "x"]) == 2
    assert error_line().endswith("they have: grad_norm, loss, lr, val_loss, val_ppl")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    assert main(["plot", "--run", a, "--out", str(tmp_path / "x.png")]) == 2
    assert error_line() == "error: llmzoo plot needs matplotlib: pip install 'llmzoo[plot]'"
    assert not (tmp_path / "x.png").exists()


PROMPT, CORRUPT = "def f(x):\n", "def f(x): a"  # 8 tokens; the last one differs


@pytest.fixture
def figures(monkeypatch):
    """``{function name: [figure, ...]}`` drawn by ``llmzoo inspect``."""
    from llmzoo import viz

    drawn = {}
    for name in ("attention_grid", "logit_lens_grid", "patching_map"):
        original = getattr(viz, name)

        def keep(*args, _original=original, _name=name, **kwargs):
            drawn.setdefault(_name, []).append(_original(*args, **kwargs))
            return drawn[_name][-1]

        monkeypatch.setattr(viz, name, keep)
    return drawn


def model_argmax(run, text):
    """The run's tokens of ``text`` and its top next token at each position, computed here."""
    from llmzoo import run_dir
    from llmzoo.models import decoder

    cfg, params, _ = run_dir.load_params(run)
    tok = run_dir.read_tokenizer(run)
    ids = tok.encode(text)
    logits = decoder.apply(params, {"tokens": np.asarray([ids])}, cfg=cfg.model)["logits"][0]
    return tok, ids, np.asarray(logits, np.float32).argmax(-1)


@pytest.mark.slow  # ~10 s alone, mostly compiling; ~45 s on 2 cores shared with other work
def test_inspect_writes_the_maps(pretrained_decoder, tmp_path, capsys, figures):
    out = tmp_path / "out"
    args = ["--prompt", PROMPT, "--corrupt", CORRUPT, "--out", str(out), "--html", "--layers", "1"]
    assert main(["inspect", "--run", pretrained_decoder, *args]) == 0
    text = capsys.readouterr().out
    assert "top heads by induction score" in text and "patching: answer" in text
    tok, ids, top = model_argmax(pretrained_decoder, PROMPT)
    t = len(ids)
    # 4 heads of layer 1 in one PNG: 4 x 2.4 + 1.5 by 2.4 + 1 inches at 100 dpi; no layer 0
    assert png_shape(out / "attention_L1.png") == (340, 1110)
    assert not (out / "attention_L0.png").exists()
    lens_w, patch_w = max(600, round(t * 90 + 150)), max(600, round(t * 60 + 150))
    assert png_shape(out / "logit_lens.png") == (250, lens_w)  # 3 rows: the 2.5 in minimum
    assert png_shape(out / "patching.png") == (250, patch_w)
    assert png_shape(out / "patching_heads.png") == (250, 600)
    page = (out / "index.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 4 and "http" not in page

    (attention,) = figures["attention_grid"]
    for ax in attention.axes[:4]:  # causal probabilities: rows sum to 1 over keys <= t
        probs = np.asarray(ax.images[0].get_array())
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
        assert np.all(np.triu(probs, 1) == 0)
    (lens,) = figures["logit_lens_grid"]
    cells = [x.get_text() for x in lens.axes[0].texts]
    from llmzoo.viz.maps import token_label

    assert cells[-t:] == [token_label(tok.id_to_piece(int(i))) for i in top]  # lens = the model

    residual, heads = figures["patching_map"]
    restored = np.asarray(residual.axes[0].images[0].get_array())  # [L + 1, T]
    changed = [i for i, (a, b) in enumerate(zip(ids, tok.encode(CORRUPT), strict=True)) if a != b]
    assert restored.shape == (3, t) and changed == [t - 1]
    # the streams before the changed token are the same in both runs: nothing to restore; the
    # changed (last) position's stream, patched at any depth, makes the corrupted run clean
    np.testing.assert_allclose(restored[:, :-1], 0.0, atol=1e-3)
    np.testing.assert_allclose(restored[:, -1], 1.0, atol=1e-3)
    assert np.asarray(heads.axes[0].images[0].get_array()).shape == (2, 4)


def test_inspect_errors(pretrained_decoder, tmp_path, error_line, monkeypatch):
    from llmzoo import run_dir
    from llmzoo.presets import resolve_train_config

    rnn = tmp_path / "rnn"
    rnn.mkdir()
    run_dir.write_config(str(rnn), resolve_train_config(overrides=["model.preset=lstm-tiny"]))
    out = ["--out", str(tmp_path / "out")]
    ok = ["--run", pretrained_decoder, "--prompt", "The value of x is", *out]
    tok = run_dir.read_tokenizer(pretrained_decoder)
    n_bad = len(tok.encode("The value of x is not"))
    cases = [
        (["--run", str(rnn), "--prompt", "a b", *out], "model.kind=rnn model, which has no att"),
        (["--run", str(rnn), "--prompt", "a b", "--maps", "lens", *out], "causal language mod"),
        ([*ok, "--maps", "lens,colors"], "--maps 'lens,colors': choose from attention, lens,"),
        ([*ok, "--layers", "0,2"], "--layers [0, 2]: the model has layers 0..1"),
        ([*ok, "--corrupt", "The value of x is not"], f"--corrupt is {n_bad} tokens, --prompt"),
        (["--run", pretrained_decoder, "--prompt", "", *out], "--prompt '' has no tokens"),
    ]
    for args, message in cases:
        assert main(["inspect", *args]) == 2
        assert message in error_line()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    assert main(["inspect", *ok]) == 2
    assert error_line() == "error: llmzoo inspect needs matplotlib: pip install 'llmzoo[plot]'"
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_default_corruption_changes_one_token():
    class Tok:
        vocab_size, pad_id, bos_id, eos_id, unk_id = 6, 0, 1, 2, 3

    class Cfg:
        vocab_size = 8  # more than the tokenizer has: ids 6 and 7 are never drawn

    ids = [4, 5, 4, 5, 4, 5, 4]  # T = 7: index 7 - 7 // 3 = 5 changes
    for seed in range(20):
        bad = cli_inspect.corrupt_ids(Tok(), ids, None, Cfg(), seed)
        assert bad[:5] + bad[6:] == ids[:5] + ids[6:] and bad[5] == 4  # the only other id
    assert cli_inspect.corrupt_ids(Tok(), [5], None, Cfg(), 0) == [4]
