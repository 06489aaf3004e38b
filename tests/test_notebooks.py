"""Every notebook in colab/ states its runtime and installs llmzoo from pyproject's repository URL.

(The notebooks themselves are executed by nbmake: ``pytest --nbmake colab``.)
"""

import pathlib
import tomllib

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))

# The first code cell of every notebook, verbatim; {repo} is pyproject's Repository URL.
INSTALL_CELL = """\
# Install llmzoo: use the local checkout when there is one, else the repository (Colab).
# Colab keeps its own accelerator-enabled JAX: llmzoo accepts any jax>=0.10.
import importlib.util
import pathlib
import subprocess
import sys

REPO = "{repo}"  # pyproject.toml [project.urls] Repository
if importlib.util.find_spec("llmzoo") is None:
    here = next((p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents)
                 if (p / "pyproject.toml").exists() and (p / "llmzoo").is_dir()), None)
    target = ["-e", str(here)] if here else [f"git+{{REPO}}"]
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *target])"""


def _repository() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"]


def test_repository_url_is_a_github_repository():
    assert _repository().startswith("https://github.com/")
    assert _repository().count("/") == 4 and not _repository().endswith("/")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_states_its_runtime_and_installs_from_the_repository(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown", "the first cell is the title and the runtime"
    assert any(line.startswith("Runtime:") for line in first.source.splitlines())
    code = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert code.source.strip() == INSTALL_CELL.format(repo=_repository())
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "clear outputs"
