"""Checks that installing llmzoo keeps a Colab runtime's accelerator-enabled JAX.

Builds the wheel, pins a Colab-like environment in a constraints file (the jax, jaxlib, numpy,
flax ... installed in this venv, plus ``jax-cuda12-plugin`` / ``jax-cuda12-pjrt`` of the same
version, as a GPU runtime has), and asks pip what ``pip install llmzoo.whl`` would do
(``--dry-run --report``):

1. ``installed``: in this venv, whose JAX stands for the runtime's: pip must install llmzoo (and
   the CUDA plugin) and leave jax, jaxlib and every other pinned package as they are.
2. ``fresh, older jax`` (``--older``): a resolution from scratch (``--ignore-installed``) with
   jax/jaxlib pinned to an older release of llmzoo's range, e.g. ``0.10.0``: it must resolve, with
   jax at the pin.

Usage: ``.venv/bin/python benchmarks/colab_deps.py [--older 0.10.0]`` (needs PyPI).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PINNED = (
    *("jax", "jaxlib", "numpy", "flax", "optax", "orbax-checkpoint", "ml_dtypes", "absl-py"),
    *("pyyaml", "tqdm", "sentencepiece", "tokenizers", "tensorflow-datasets", "grain"),
)
PLUGINS = ("jax-cuda12-plugin", "jax-cuda12-pjrt")


def build_wheel(out: pathlib.Path) -> pathlib.Path:
    cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out)]
    subprocess.run([*cmd, str(ROOT)], check=True, capture_output=True)
    return next(out.glob("llmzoo-*.whl"))


def dry_run(args: list[str], tmp: pathlib.Path) -> tuple[dict[str, str], float]:
    """``pip install --dry-run`` and its report: {name: version} that pip would install."""
    report = tmp / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--report", str(report)]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"pip failed:\n{proc.stderr[-3000:]}")
    items = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in items}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--older", default=None, help="also resolve from scratch at this jax")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = pathlib.Path(name)
        wheel = build_wheel(tmp)
        pins = {p: md.version(p) for p in PINNED}
        jax = pins["jax"]
        constraints = tmp / "colab.txt"
        lines = [f"{p}=={v}" for p, v in pins.items()] + [f"{p}=={jax}" for p in PLUGINS]
        constraints.write_text("\n".join(lines) + "\n")
        print(f"wheel: {wheel.name}; Colab-like pins: {', '.join(lines)}\n")

        plugins = [f"{p}=={jax}" for p in PLUGINS]
        would, seconds = dry_run(["-c", str(constraints), str(wheel), *plugins], tmp)
        replaced = sorted(p for p in pins if p.lower() in would)
        print("| case | pip would install | pinned packages replaced | time |")
        print("|---|---|---|---:|")
        shown = ", ".join(f"{k} {v}" for k, v in sorted(would.items()))
        print(f"| installed jax {jax} | {shown} | {', '.join(replaced) or 'none'} | "
              f"{seconds:.1f} s |")  # fmt: skip
        ok = not replaced and "llmzoo" in would
        if args.older:
            older = tmp / "older.txt"
            older.write_text(f"jax=={args.older}\njaxlib=={args.older}\n")
            fresh, seconds = dry_run(["--ignore-installed", "-c", str(older), str(wheel)], tmp)
            got = f"jax {fresh.get('jax')}, jaxlib {fresh.get('jaxlib')}"
            print(f"| fresh, jax pinned to {args.older} | {len(fresh)} packages: {got} | "
                  f"resolves | {seconds:.1f} s |")  # fmt: skip
            ok &= fresh.get("jax") == args.older
        print("\nOK: pip keeps the runtime's JAX" if ok else "\nFAILED: pip would replace JAX")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
