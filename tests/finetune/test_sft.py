"""Instruction tuning: response-only loss masks (default and Jinja templates), packing, bad
input, and a tiny decoder that learns held-out synthetic instructions."""

import json

import numpy as np
import pytest

from llmzoo import run_dir as ckpt
from llmzoo.cli import main
from llmzoo.data.records import make_record_eval_batches
from llmzoo.data.sft import (
    DefaultTemplate,
    JinjaTemplate,
    record_messages,
    render_jinja,
    synthetic_instructions,
)
from llmzoo.errors import DataError
from llmzoo.eval_sft import exact_match
from llmzoo.objectives.sft import SftExamples, template_for
from llmzoo.presets import resolve_train_config
from llmzoo.train.loop import train

EOS = 3


class CharTokenizer:
    """One id per character (its code point); eos is id 3, shown as ``$``."""

    eos_id, bos_id, path = EOS, -1, "chars"

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join("$" if i == EOS else chr(i) for i in ids)


def shown(example) -> str:
    """The example's targets, with every target outside the loss mask as ``.``."""
    chars = CharTokenizer().decode(example["targets"])
    return "".join(c if m else "." for c, m in zip(chars, example["loss_mask"], strict=True))


def test_default_template_masks_all_but_the_responses():
    ex = SftExamples(64, CharTokenizer(), DefaultTemplate())
    alpaca = ex({"instruction": "hi", "input": "x", "output": "yo"})
    # "<|user|>\nhi\n\nx\n<|assistant|>\n" is 29 characters: targets 0..27 are prompt.
    assert CharTokenizer().decode(alpaca["tokens"][:29]) == "<|user|>\nhi\n\nx\n<|assistant|>\n"
    assert shown(alpaca) == "." * 28 + "yo$"
    chat = ex({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                            {"role": "assistant", "content": "b"},
                            {"role": "user", "content": "c"},
                            {"role": "assistant", "content": "d"}]})  # fmt: skip
    # 38 prompt characters, "b$", 25 of the second user turn and header, "d$".
    assert shown(chat) == "." * 37 + "b$" + "." * 25 + "d$"
    np.testing.assert_array_equal(chat["targets"][:-1], chat["tokens"][1:])


TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}[U]{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}[A]{{ m['content'] }}{{ eos_token }}\n"
    "{% else %}{{ raise_exception('no system turns') }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}[A]{% endif %}"
)
MESSAGES = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "bb"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]  # fmt: skip


def test_jinja_template_renders_as_transformers_and_masks_the_responses():
    from transformers.utils.chat_template_utils import render_jinja_template

    tokens = {"bos_token": "<s>", "eos_token": "</s>"}
    for prompt in (False, True):
        ours = render_jinja(TEMPLATE, MESSAGES[:3], add_generation_prompt=prompt, **tokens)
        ref = render_jinja_template([MESSAGES[:3]], chat_template=TEMPLATE,
                                    add_generation_prompt=prompt, **tokens)[0][0]  # fmt: skip
        assert ours == ref
    ex = SftExamples(64, CharTokenizer(), JinjaTemplate(TEMPLATE, **tokens))
    # "<s>[U]a\n[A]" | "bb</s>\n" | "[U]c\n[A]" | "d</s>\n": the template's text ends a turn.
    assert shown(ex({"messages": MESSAGES})) == "." * 10 + "bb</s>\n" + "." * 8 + "d</s>\n"
    with pytest.raises(DataError, match="no system turns"):
        ex({"messages": [{"role": "system", "content": "s"}, *MESSAGES]})


class FolderTokenizer(CharTokenizer):
    """A character tokenizer stored in a folder, as a converted checkpoint's is."""

    def __init__(self, folder):
        self.path = str(folder / "tokenizer.json")

    def id_to_piece(self, tid):
        return {EOS: "</s>"}[tid]


def test_the_tokenizers_own_template_is_found_and_kept_with_the_run(tmp_path):
    assert isinstance(template_for(FolderTokenizer(tmp_path)), DefaultTemplate)
    config = {"chat_template": [{"name": "default", "template": TEMPLATE}], "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ex = SftExamples(64, FolderTokenizer(tmp_path))
    assert ex.template.tokens == {"bos_token": "", "eos_token": "</s>", "pad_token": ""}
    assert shown(ex({"messages": MESSAGES[:2]})) == "." * 7 + "bb</s>\n"
    assert ex.run_files() == {"chat_template.jinja": TEMPLATE}
    # A run's own chat_template.jinja (written by run_files) comes first.
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert template_for(FolderTokenizer(tmp_path)).template == "{{ messages[0]['content'] }}"


def test_packing_restarts_segments_and_masks_a_split_remainder():
    ex = SftExamples(40, CharTokenizer(), DefaultTemplate())
    records = [{"instruction": "a" * n, "output": "z"} for n in (2, 3, 13)]
    # 27, 28 and 38 tokens each (26 + len): rows of 40 are [27 | 13 of 28], [15 of 28 | 25 of 38].
    rows = make_record_eval_batches(records, ex, batch_size=2)[0]
    np.testing.assert_array_equal(rows["segment_ids"][0], [1] * 27 + [2] * 13)
    np.testing.assert_array_equal(rows["positions"][0], [*range(27), *range(13)])
    np.testing.assert_array_equal(rows["positions"][1], [*range(15), *range(25)])
    # The first example's last target is its own eos, not the next example's first token.
    assert rows["targets"][0, 26] == EOS and rows["tokens"][0, 27] == ord("<")
    assert shown({k: v[0] for k, v in rows.items()}) == "." * 25 + "z$" + "." * 13
    # The second example's remainder lost its prompt: no loss on its "z$".
    assert shown({k: v[1] for k, v in rows.items()}) == "." * 40
    # Every target is the next token of the same segment, or (at a segment's end) the eos.
    seg, tok, tgt = rows["segment_ids"], rows["tokens"], rows["targets"]
    same = seg[:, :-1] == seg[:, 1:]
    assert (tgt[:, :-1][same] == tok[:, 1:][same]).all()
    ends = (seg[:, :-1] != seg[:, 1:]) & (seg[:, :-1] != 0)
    assert (tgt[:, :-1][ends] == EOS).all() and ends.sum() == 2


def test_synthetic_instructions_are_exact_disjoint_and_seeded(tmp_path):
    train_records = synthetic_instructions("train")
    val = synthetic_instructions("validation")
    key = lambda r: (r["instruction"], r["input"])  # noqa: E731
    assert not {key(r) for r in train_records} & {key(r) for r in val}
    assert len(train_records) + len(val) == 1100 and 80 < len(val) < 140
    for r in train_records + val:
        if r["instruction"].startswith("Reverse"):
            assert r["output"] == r["input"][::-1] and len(r["input"]) == 3
        else:
            a, b = map(int, r["input"].split())
            assert int(r["output"]) == a + b
    assert synthetic_instructions("train", seed=1) != train_records
    assert sorted(map(key, synthetic_instructions("train", seed=1))) == sorted(
        map(key, train_records)
    )


def test_record_without_a_response_is_one_line_exit_2(tmp_path, capsys, pretrained_decoder):
    data = tmp_path / "chat"
    data.mkdir()
    good = {"instruction": "Say hi.", "output": "hi"}
    bad = {"messages": [{"role": "user", "content": "Say hi."}]}
    (data / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    (data / "validation.jsonl").write_text(json.dumps(good) + "\n")
    args = ["train", "objective.name=sft", f"data.dataset={data}",
            f"init_from={pretrained_decoder}", f"run_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: record 1 of train of ") and "no assistant turn" in err[0]


@pytest.mark.slow
def test_sft_learns_held_out_instructions(tmp_path, capsys, pretrained_decoder):
    run = tmp_path / "sft"
    cfg = resolve_train_config(
        "configs/sft-tiny.yaml",
        overrides=[f"init_from={pretrained_decoder}", f"run_dir={run}", "log_every=1000"],
    )
    train(cfg, progress=False, log=lambda *a, **k: None, extras=False)
    val = synthetic_instructions("validation")
    base_cfg, base_params, _ = ckpt.load_params(pretrained_decoder)
    examples = SftExamples(128, ckpt.read_tokenizer(pretrained_decoder))
    base = exact_match(base_params, base_cfg.model, examples, val)
    assert main(["eval", "--run", str(run)]) == 0
    tuned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    print(f"held-out exact match: base {base['exact_match']:.3f}, sft {tuned['exact_match']:.3f}")
    assert base["exact_match"] == 0.0
    assert tuned["count"] == len(val) and tuned["exact_match"] > 0.5

    # `llmzoo generate` answers a user message through the run's chat template, as exact match
    # prompts it; --raw continues the plain text instead
    run_cfg, params, _ = ckpt.load_params(str(run))
    tuned_examples = SftExamples(128, ckpt.read_tokenizer(str(run)))
    capsys.readouterr()
    for record in val[:2]:
        (message,) = [m["content"] for m in record_messages(record) if m["role"] == "user"]
        (_, _, greedy), *_ = exact_match(params, run_cfg.model, tuned_examples, [record])["samples"]
        assert main(["generate", "--run", str(run), "--prompt", message]) == 0
        assert capsys.readouterr().out == greedy + "\n"
    assert main(["generate", "--run", str(run), "--prompt", message, "--raw"]) == 0
    assert capsys.readouterr().out.startswith(message)
