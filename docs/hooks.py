"""MkDocs hooks: pages generated at build time from the code, and the notebooks of ``colab/``.

Nothing generated is committed. At every build:

* ``reference/config.md`` lists every config dataclass (``llmzoo.config`` and each model kind's
  config in ``llmzoo.models.registry.CONFIGS``): fields, types, defaults and the descriptions
  from the ``Attributes:`` section of its docstring;
* ``reference/cli.md`` holds the ``--help`` of every ``llmzoo`` subcommand, from
  ``llmzoo.cli.build_parser``;
* ``colab/NAME/`` for every ``colab/*.ipynb``, rendered (not executed) by
  mkdocs-jupyter, and appended to the navigation;
* the marker ``<!-- llmzoo:rules-table -->`` in a page becomes the logical-axis rules table of
  ``llmzoo.sharding.RULES``;
* the marker ``<!-- llmzoo:api MODULE ... -->`` becomes an API section (``::: MODULE``) for each
  module that exists at build time (modules still being written are left out).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import pathlib
import re

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parent.parent
RULES_MARKER = "<!-- llmzoo:rules-table -->"
API_MARKER = re.compile(r"<!-- llmzoo:api ([\w. ]+) -->")
_ROLE = re.compile(r":(?:class|func|mod|attr|meth|data|exc|obj):`~?([^`]+)`")


def _plain(text: str) -> str:
    """Docstring text as Markdown: Sphinx roles become code spans, lines are joined."""
    text = _ROLE.sub(r"`\1`", text)
    return " ".join(line.strip() for line in text.splitlines()).strip()


def attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style docstring: field name -> description.

    A line ``a, b: text`` documents both ``a`` and ``b``. Only the class's own docstring is read.
    """
    doc = inspect.cleandoc(cls.__doc__ or "")
    match = re.search(r"^Attributes:\n((?:[ \t]+.*\n?|\n)*)", doc, re.MULTILINE)
    if not match:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    for line in inspect.cleandoc(match.group(1)).splitlines():
        entry = re.match(r"^([\w, ]+):\s*(.*)$", line)
        if entry and not line.startswith(" "):
            names = [n.strip() for n in entry.group(1).split(",") if n.strip()]
            for name in names:
                out[name] = entry.group(2)
        else:
            for name in names:
                out[name] += "\n" + line
    return {name: _plain(text) for name, text in out.items()}


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory.__name__}()`"
    return "required"


def _summary(cls: type) -> str:
    first = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    return _plain(first)


def config_section(cls: type, title: str) -> str:
    """One config dataclass as Markdown: its summary and a list of its fields."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):  # a subclass's descriptions win over its base's
        docs.update(attribute_docs(base) if dataclasses.is_dataclass(base) else {})
    lines = [f"## {title}", "", f"`{cls.__module__}.{cls.__qualname__}`: {_summary(cls)}", ""]
    for field in dataclasses.fields(cls):
        text = docs.get(field.name, "")
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        head = f"- **`{field.name}`** (`{kind}`, default {_default(field)})"
        lines.append(f"{head}: {text}" if text else head)
    return "\n".join(lines) + "\n"


def config_reference() -> str:
    """The configuration reference page."""
    from llmzoo import config
    from llmzoo.models import registry

    sections = [
        (config.TrainConfig, "TrainConfig (top level)"),
        (config.ModelConfig, "ModelConfig (fields of every kind)"),
    ]
    sections += [
        (cls, f"model.kind={kind}: {cls.__name__}") for kind, cls in registry.CONFIGS.items()
    ]
    sections += [
        (config.DataConfig, "data: DataConfig"),
        (config.OptimConfig, "optim: OptimConfig"),
        (config.ObjectiveConfig, "objective: ObjectiveConfig"),
        (config.LoraConfig, "lora: LoraConfig"),
        (config.QuantConfig, "quant: QuantConfig"),
        (config.PruneConfig, "prune: PruneConfig"),
        (config.RopeScaling, "model.rope_scaling: RopeScaling"),
    ]
    head = (
        "# Configuration reference\n\n"
        "Generated at build time from the config dataclasses. A YAML file (`--config`) or a\n"
        "`key=value` argument sets any field by its dotted path (`model.d_model=64`,\n"
        "`optim.lr=1e-3`); `model.kind` chooses which model config applies.\n\n"
    )
    return head + "\n".join(config_section(cls, title) for cls, title in sections)


def _subcommands(parser: argparse.ArgumentParser, prefix: str):
    """Yields ``(command line, parser)`` for ``parser`` and, depth first, its subcommands."""
    yield prefix, parser
    seen: set[int] = set()
    for action in parser._actions:  # argparse offers no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from _subcommands(sub, f"{prefix} {name}")


def cli_reference() -> str:
    """The CLI reference page: the ``--help`` of every (sub)command."""
    from llmzoo.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: make it fixed
    parts = ["# CLI reference\n\nGenerated at build time from `llmzoo.cli.build_parser()`.\n"]
    for line, parser in _subcommands(build_parser(), "llmzoo"):
        parser.prog = line
        parts.append(f"## `{line}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def rules_table() -> str:
    """``llmzoo.sharding.RULES`` as a Markdown table."""
    from llmzoo.sharding import RULES

    rows = ["| logical axis | mesh axes |", "|---|---|"]
    for name, axes in RULES:
        shown = (
            "replicated"
            if axes is None
            else ", ".join(f"`{a}`" for a in (axes if isinstance(axes, tuple) else (axes,)))
        )
        rows.append(f"| `{name}` | {shown} |")
    return "\n".join(rows)


def notebooks() -> list[pathlib.Path]:
    return sorted((ROOT / "colab").glob("*.ipynb"))


def notebook_title(path: pathlib.Path) -> str:
    """The first ``# heading`` of the notebook's first markdown cell, else its file name."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
            break
    return path.stem


def on_config(config):
    """Appends the notebooks of ``colab/`` to the navigation."""
    entries = [{notebook_title(p): f"colab/{p.name}"} for p in notebooks()]
    if entries and config.nav is not None:
        config.nav.append({"Notebooks": entries})
    return config


@event_priority(100)  # before mkdocs-jupyter wraps the notebooks
def on_files(files, config):
    """Adds the generated reference pages and the notebooks to the site's files."""
    files.append(File.generated(config, "reference/config.md", content=config_reference()))
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    for path in notebooks():  # a real file under the repository root, as mkdocs-jupyter expects
        files.append(
            File(
                f"colab/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files


def _exists(module: str) -> bool:
    """Whether ``module`` and its packages are importable as regular (not namespace) packages."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:i]))
        except ModuleNotFoundError:  # a parent package is missing
            return False
        if spec is None or spec.origin in (None, "namespace"):  # e.g. no __init__.py yet
            return False
    return True


def api_sections(match: re.Match) -> str:
    """``::: MODULE`` for each module of an API marker that exists."""
    return "\n\n".join(f"::: {m}" for m in match.group(1).split() if _exists(m))


def on_page_markdown(markdown, page, config, files):
    """Replaces the rules-table and API markers."""
    markdown = markdown.replace(RULES_MARKER, rules_table())
    return API_MARKER.sub(api_sections, markdown)
