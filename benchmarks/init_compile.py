"""Compile time of a model's param init: llmzoo's ``init_params`` against drawing every leaf
separately (what it did before small normal leaves were drawn together).

Each row lowers and compiles both initializers for one preset, in the same process, without a
persistent compilation cache, and prints their compile times, the ratio, and how many leaves the
preset has and how many of them are drawn together (``TOGETHER_MAX_SIZE`` scalars or fewer).

Usage:
    python benchmarks/init_compile.py [--presets gpt2-tiny,llama-tiny,...] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from llmzoo.models import registry
from llmzoo.params import _drawn_together, _path_key, init_params, is_spec
from llmzoo.presets import get_model_preset

PRESETS = "gpt2-tiny,llama-tiny,bert-tiny,t5-tiny,bart-tiny,mamba-tiny,rwkv-tiny,gpt2-small"


def separately(specs):
    """The reference: each leaf drawn by its own initializer, one random program per leaf."""

    def build(key):
        return jax.tree_util.tree_map_with_path(
            lambda p, s: s.init(_path_key(key, p), s.shape, s.dtype), specs, is_leaf=is_spec
        )

    return build


def compile_seconds(fn, rounds: int) -> float:
    """Median seconds to lower and compile ``fn(key)`` afresh (a new ``jax.jit`` each round)."""
    times = []
    for _ in range(rounds):
        jitted = jax.jit(lambda k: fn(k))  # a new function: nothing cached in memory
        t0 = time.perf_counter()
        jitted.lower(jax.random.key(0)).compile()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=PRESETS)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    jax.jit(lambda x: x + 1)(1.0)  # backend start-up out of the first row
    print(f"{'preset':12s} {'leaves':>6s} {'together':>8s} {'llmzoo':>9s} {'separately':>10s}")
    for name in args.presets.split(","):
        cfg = get_model_preset(name)
        specs = registry.get(cfg.kind).param_specs(cfg)
        leaves = jax.tree.leaves(specs, is_leaf=is_spec)
        together = sum(_drawn_together(s) for s in leaves)
        ours = compile_seconds(lambda k, specs=specs: init_params(k, specs), args.rounds)
        ref = compile_seconds(separately(specs), args.rounds)
        print(
            f"{name:12s} {len(leaves):6d} {together:8d} {ours:8.2f}s {ref:9.2f}s"
            f"  separately / llmzoo {ref / ours:.2f}x"
        )


if __name__ == "__main__":
    main()
