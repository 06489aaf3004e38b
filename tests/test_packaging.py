"""Packaging: the sdist and wheel build, pass ``twine check``, and the wheel runs from a fresh venv.

The fresh venv gets llmzoo from the wheel alone (``--no-deps``); its dependencies (jax, flax ...)
come from the test venv's site-packages through a ``.pth`` file, so nothing is downloaded.
"""

import json
import math
import pathlib
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(*cmd, cwd=None, timeout=600):
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """``python -m build`` of the checkout: ``{"sdist": path, "wheel": path}``."""
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend (setuptools) comes from this venv, not a download.
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=ROOT)
    (sdist,) = out.glob("llmzoo-*.tar.gz")
    (wheel,) = out.glob("llmzoo-*-py3-none-any.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def fresh(dist, tmp_path_factory):
    """A new venv with the wheel installed; returns its directory."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    deps = sysconfig.get_paths()["purelib"]  # this venv's site-packages: jax, flax ...
    pth = pathlib.Path(purelib.stdout.strip()) / "zz_test_deps.pth"
    pth.write_text(f"import site; site.addsitedir({deps!r})\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
         dist["wheel"])  # fmt: skip
    return venv


@pytest.mark.slow
def test_sdist_and_wheel_pass_twine_check_and_hold_the_package(dist):
    proc = _run(sys.executable, "-m", "twine", "check", "--strict", dist["sdist"], dist["wheel"])
    assert proc.stdout.count("PASSED") == 2, proc.stdout
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "llmzoo").rglob("*.py")}
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = set(whl.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(meta).decode()
    assert package <= names, sorted(package - names)[:5]
    assert "Project-URL: Repository, https://github.com/llmzoo/llmzoo" in metadata
    assert "Requires-Dist: jax>=0.10" in metadata
    with tarfile.open(dist["sdist"]) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "llmzoo/cli.py"} <= members


@pytest.mark.slow
def test_wheel_runs_help_and_a_tiny_train_in_a_fresh_venv(fresh, tmp_path):
    python, cli = fresh / "bin" / "python", fresh / "bin" / "llmzoo"
    where = _run(python, "-c", "import llmzoo; print(llmzoo.__file__)", cwd=tmp_path)
    location = pathlib.Path(where.stdout.strip()).resolve()
    assert location.is_relative_to(fresh.resolve()), location  # not the editable checkout
    assert not location.is_relative_to(ROOT)
    assert "train" in _run(cli, "--help", cwd=tmp_path).stdout

    from pydoc_data.topics import topics

    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(v for _, v in sorted(topics.items())[:40]), encoding="utf-8")
    run_dir = tmp_path / "run"
    args = [
        f"data.dataset={text}", "data.txt_documents=paragraph", f"data.data_dir={tmp_path / 'c'}",
        "data.vocab_size=512", "model.vocab_size=512", "model.d_model=32", "model.n_layers=2",
        "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=32", "seq_len=32",
        "batch_size=8", "steps=3", "optim.warmup_steps=1", "log_every=1", "eval_every=3",
        "eval_batches=1", "ckpt_every=3", "sample_tokens=4", f"run_dir={run_dir}",
    ]  # fmt: skip
    _run(cli, "train", "--no-progress", *args, cwd=tmp_path)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert math.log(512) * 0.5 < losses[0] < math.log(512) * 1.5  # near uniform at the start
