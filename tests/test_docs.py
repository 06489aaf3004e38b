"""The documentation site: ``mkdocs build --strict`` passes and its generated pages are complete."""

import argparse
import dataclasses
import html
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(path: pathlib.Path) -> str:
    """A built page's visible text (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8")))


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    names = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                names |= {name} | _subcommands(sub)
    return names


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_config_reference_lists_every_field_with_its_default(site):
    from llmzoo.config import TrainConfig
    from llmzoo.models.registry import CONFIGS

    page = _text(site / "reference" / "config" / "index.html")
    assert "d_model" in page and "(int, default 768): D." in page  # DecoderConfig.d_model
    for cls in (TrainConfig, *CONFIGS.values()):
        for field in dataclasses.fields(cls):
            assert f"{field.name} (" in page, (cls.__name__, field.name)
    assert "sequences per optimizer step (global, across devices)" in page  # a docstring line


@pytest.mark.slow
def test_cli_reference_has_every_subcommand(site):
    from llmzoo.cli import build_parser

    page = _text(site / "reference" / "cli" / "index.html")
    names = _subcommands(build_parser())
    assert {"train", "eval", "generate", "convert", "quantize"} <= names
    for name in names:
        assert re.search(rf"^llmzoo( \w+)* {re.escape(name)}¶?$", page, re.MULTILINE), name
    assert "--stop-at STOP_AT" in page  # the help text itself, not only the headings


@pytest.mark.slow
def test_notebooks_rules_table_and_api_pages_are_built(site):
    from llmzoo.sharding import RULES

    for notebook in sorted((ROOT / "colab").glob("*.ipynb")):
        page = site / "colab" / notebook.stem / "index.html"
        assert page.exists(), notebook.name
        assert "Install llmzoo" in _text(page)  # rendered, source included
    concepts = _text(site / "concepts" / "index.html")
    for name, _ in RULES:
        assert re.search(rf"^{name}$", concepts, re.MULTILINE), name
    models = (site / "api" / "models" / "index.html").read_text(encoding="utf-8")
    assert 'id="llmzoo.models.decoder.apply"' in models


def test_attribute_docs_reads_google_attributes_with_shared_entries():
    @dataclasses.dataclass
    class Example:
        """Summary line.

        Attributes:
            lr: the learning rate, see :class:`~llmzoo.config.OptimConfig`.
            eval_every, eval_batches: periodic
                validation.
        """

        lr: float = 0.1
        eval_every: int = 10
        eval_batches: int = 2

    hooks = _hooks()
    assert hooks.attribute_docs(Example) == {
        "lr": "the learning rate, see `llmzoo.config.OptimConfig`.",
        "eval_every": "periodic validation.",
        "eval_batches": "periodic validation.",
    }
    section = hooks.config_section(Example, "Example")
    assert "- **`eval_batches`** (`int`, default `2`): periodic validation." in section
