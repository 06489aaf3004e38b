"""The CLI: useful help, and bad input answered by one clear line, exit 2, run dir untouched."""

import hashlib
import os

import pytest

from llmzoo.cli import build_parser, main


def tree_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(p.encode())
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.mark.parametrize("command", [[], ["train"], ["generate"], ["convert"], ["tokenizer"]])
def test_help_is_useful(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: llmzoo" in out and len(out.splitlines()) > 5


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["no_such_key=1"], "unknown config key 'no_such_key'"),
        (["model.no_such=1"], "unknown config key 'model.no_such'"),
        (["steps=many"], "config key 'steps' expects int"),
        (["optim.lr=fast"], "config key 'optim.lr' expects float"),
        (["model.d_model=32", "model.n_heads=5"], "model.n_heads=5 does not divide"),
        (["seq_len=2048"], "exceeds the positional table"),
        (["preset=huge"], "unknown training preset 'huge'"),
        (["model.preset=gpt9"], "unknown model preset 'gpt9'"),
        (["batch_size=10", "grad_accum=3"], "not divisible by grad_accum=3"),
        (["model.kind=transformer"], "model.kind='transformer' is unknown; use one of decoder"),
        (["model.type_vocab_size=2"], "'model.type_vocab_size'; valid keys here of model.kind="),
        (["model.kind=encoder", "model.vocab_sise=9"], "'model.vocab_sise'; valid keys here of"),
        (["model.kind=seq2seq", "model.decoder_start_id=null"], "decoder_start_id is not set"),
        (["objective.name=mlm"], "trains model kinds encoder, not model.kind='decoder'"),
        (["objective.name=span"], "objective.name='span' is unknown"),
        (["objective.noise_density=0"], "objective.noise_density=0.0 is out of range"),
        (["steps=-5"], "steps=-5 is out of range; use a value in [1, inf)"),
        (["optim.lr=-1"], "optim.lr=-1.0 is out of range"),
        (["model.dropout=1.5"], "model.dropout=1.5 is out of range"),
        (["optim.warmup_steps=700"], "optim.warmup_steps=700 exceeds steps=600"),
        (["model.family=bert"], "model.family='bert' is not a family of model.kind='decoder'"),
        (["mesh_data=3"], "mesh_data=3 x mesh_fsdp=1 x mesh_tensor=1 needs 3 devices but this"),
        (["steps=[1"], "override 'steps=[1' is not valid YAML at line 1, column 3"),
        (["data.tokenizer_type=wordpiece"], "data.tokenizer_type='wordpiece' is unknown"),
    ],
)
def test_bad_config_is_one_line(overrides, expected, tmp_path, error_line):
    run_dir = tmp_path / "run"
    assert main(["train", f"run_dir={run_dir}", *overrides]) == 2
    assert expected in error_line()
    assert not run_dir.exists()


def test_missing_tokenizer_is_one_line(tmp_path, error_line):
    code = main(
        [
            "train",
            f"run_dir={tmp_path}/run",
            f"data.tokenizer={tmp_path}/nope.model",
            "data.train_tokenizer=false",
            f"data.data_dir={tmp_path}/data",
        ]
    )
    assert code == 2
    line = error_line()
    assert "nope.model" in line and "llmzoo tokenizer train" in line


def test_unknown_config_file(error_line):
    assert main(["train", "--config", "configs/does_not_exist.yaml"]) == 2
    assert "not found" in error_line()


def test_changed_config_on_existing_run_leaves_it_intact(
    capsys, tmp_path, tiny_run_args, error_line
):
    run_dir = tmp_path / "run"
    args = [*tiny_run_args, f"run_dir={run_dir}", "steps=2", "eval_every=2", "ckpt_every=2"]
    assert main(["train", "--no-progress", *args]) == 0
    capsys.readouterr()
    before = tree_digest(run_dir)
    assert main(["train", "--no-progress", *args, "model.n_layers=3"]) == 2
    assert "model.n_layers=2" in error_line()
    assert tree_digest(run_dir) == before

    # a prompt that does not fit the context (max_seq_len=64) is refused, run untouched
    long_prompt = "x = 1\n" * 200
    assert main(["generate", "--run", str(run_dir), "--prompt", long_prompt]) == 2
    assert "exceeds the model's context of 64 tokens" in error_line()
    # a run whose tokenizer vanished
    os.remove(run_dir / "tokenizer.model")
    before = tree_digest(run_dir)
    assert main(["generate", "--run", str(run_dir), "--prompt", "x"]) == 2
    assert "tokenizer" in error_line()
    assert tree_digest(run_dir) == before


def test_generate_on_missing_run(tmp_path, error_line):
    assert main(["generate", "--run", str(tmp_path / "nothing"), "--prompt", "x"]) == 2
    assert "not an llmzoo run directory" in error_line()


def test_all_checkpoints_corrupt_is_an_error_not_a_restart(
    capsys, tmp_path, tiny_run_args, error_line
):
    run_dir = tmp_path / "run"
    args = [*tiny_run_args, f"run_dir={run_dir}", "steps=2", "eval_every=2", "ckpt_every=1"]
    assert main(["train", "--no-progress", *args]) == 0
    capsys.readouterr()
    for root, _, files in os.walk(run_dir / "checkpoints"):
        for name in files:
            if "params" in root:
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(1)
    before = tree_digest(run_dir)
    assert main(["train", "--no-progress", *args, "steps=4"]) == 2
    assert "can be read" in error_line()
    assert tree_digest(run_dir) == before  # metrics and checkpoints untouched
    assert main(["generate", "--run", str(run_dir), "--prompt", "x"]) == 2
    assert "can be read" in error_line()


def test_no_room_for_the_mask_token_is_one_line(tmp_path, error_line):
    data = tmp_path / "data"
    args = [f"data.data_dir={data}", f"data.tokenizer={data}/sp512.model", "data.vocab_size=512"]
    args += ["model.preset=bert-tiny", "objective.name=mlm", "model.vocab_size=512"]
    assert main(["train", f"run_dir={tmp_path}/run", *args]) == 2
    assert "model.vocab_size=512 leaves no room for 1 mask token" in error_line()
    assert not (tmp_path / "run").exists()


def test_generate_on_an_encoder_run_is_one_line(tmp_path, error_line):
    import jax

    from llmzoo.models import encoder
    from llmzoo.presets import get_model_preset, train_config_for
    from llmzoo.run_dir import write_run

    model = get_model_preset("bert-tiny")
    cfg = train_config_for(model)
    write_run(str(tmp_path / "run"), cfg, encoder.init(jax.random.key(0), model))
    before = tree_digest(tmp_path / "run")
    assert main(["generate", "--run", str(tmp_path / "run"), "--prompt", "The "]) == 2
    line = error_line()
    assert "model.kind='encoder'" in line and "llmzoo embed" in line
    assert tree_digest(tmp_path / "run") == before


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: [1\n", "is not valid YAML at line 2, column 1"),
        ('steps: !!python/object/apply:os.system ["echo hi"]\n', "YAML tags are not allowed"),
    ],
)
def test_bad_yaml_file_is_one_line(text, expected, tmp_path, error_line):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), f"run_dir={tmp_path}/run"]) == 2
    line = error_line()
    assert str(path) in line and expected in line
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path):
    from llmzoo.errors import ConfigError

    with pytest.raises(ConfigError, match="steps=-5"):
        main(["--debug", "train", "steps=-5", f"run_dir={tmp_path}/run"])
