"""``llmzoo compare``: a micro run writes all three outputs with finite numbers; the FLOPs formula
matches a hand count; an unknown entry is one line."""

import json
import math

import pytest

from llmzoo import compare
from llmzoo.cli import main
from llmzoo.models import decoder, rnn


def test_flops_per_token_is_the_stated_formula():
    cfg = decoder.DecoderConfig(
        family="gpt2", vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=32
    )
    # matmuls a token passes: q, k, v, o (4 D^2 = 256), the MLP (2 D F = 256), the tied head
    # (V D = 80); attention over T = 16 keys: 12 L T D = 1536.
    assert compare.flops_per_token(cfg, 16) == 6 * (256 + 256 + 80) + 12 * 1 * 16 * 8
    lstm = rnn.RnnConfig(cell="lstm", vocab_size=10, d_model=8, n_layers=1, tie_embeddings=False)
    # gates: input and recurrent weights (2 x D x 4D = 512), the untied head (D V = 80)
    assert compare.flops_per_token(lstm, 16) == 6 * (512 + 80)


@pytest.mark.slow
def test_micro_compare_writes_json_table_and_plot(tmp_path, tiny_run_args, capsys):
    data = [a for a in tiny_run_args if a.startswith("data.")]
    out = tmp_path / "cmp"
    args = ["compare", "gpt2-tiny", "lstm-tiny", *data, "--tokens", "1024", "--seq-len", "16"]
    args += ["--batch-size", "8", "--contexts", "8,40", "--decode-steps", "2", "--out", str(out)]
    assert main(args) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["gpt2-tiny", "lstm-tiny"]
    for r in rows:
        numbers = [v for k, v in r.items() if k not in ("name", "kind", "curve")]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers), r
        assert r["train_tokens"] == 1024 and r["curve"]
    gpt2, lstm = rows
    # A transformer's KV cache grows with the context; a recurrent state does not.
    assert gpt2["decode_state_bytes@40"] > 2 * gpt2["decode_state_bytes@8"]
    assert lstm["decode_state_bytes@40"] == lstm["decode_state_bytes@8"]
    table = (out / "compare.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| gpt2-tiny | decoder |")
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_unknown_entry_is_one_line(tmp_path, error_line):
    assert main(["compare", "gpt2-tiny", "gpt9-huge", "--out", str(tmp_path / "c")]) == 2
    assert "compare: unknown preset 'gpt9-huge'" in error_line()
    assert not (tmp_path / "c").exists()
