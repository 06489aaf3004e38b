"""Longformer attention memory: banded (local + global) against the dense reference, by length.

Each measurement runs in a fresh subprocess: one Longformer self-attention layer
(:func:`llmzoo.layers.longformer.attend`, chunked window, O(T (W + G)) memory) or the same rule
with ``[B, T, T]`` masks (:func:`llmzoo.layers.longformer.dense_reference`, O(T^2)), forward
only, float32, on ``x [B, T, D]`` with G global tokens spread over the row. Peak memory is the
child's ``ru_maxrss`` (``os.wait4``); *extra* is that minus a baseline child of the same length
that builds the inputs but does not attend. Children whose resident set passes ``--cap-gib`` are
killed and print ``OOM/skipped``.

    .venv/bin/python benchmarks/longformer_memory.py [--sizes 1024 2048 4096]
        [--window 256] [--globals 16] [--heads 8] [--head-dim 64] [--batch 1] [--cap-gib 12]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from peak_memory import measure  # benchmarks/ is on sys.path when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
IMPLS = ("dense", "longformer")


def child(args) -> None:
    """Runs one measurement in this process and prints ``{"time": seconds}`` as JSON."""
    import jax
    import jax.numpy as jnp

    from llmzoo.layers import attention as attn_lib
    from llmzoo.layers import longformer

    b, t, n, h = args.batch, args.child_len, args.heads, args.head_dim
    d = n * h
    keys = jax.random.split(jax.random.key(0), 3)
    init = lambda key, specs: {k: 0.02 * jax.random.normal(key, s.shape) for k, s in specs.items()}
    params = init(keys[0], attn_lib.attention_specs(d, n, n, h, qkv_bias=True))
    gparams = init(keys[1], longformer.global_specs(d, n, h))
    x = jax.random.normal(keys[2], (b, t, d), jnp.float32)
    segment = jnp.ones((b, t), jnp.int32)
    glob = jnp.zeros((b, t), jnp.int32).at[:, :: max(t // args.globals, 1)].set(1)
    jax.block_until_ready((params, gparams, x))
    if args.child_impl == "baseline":
        print(json.dumps({"time": 0.0}))
        return
    attn = longformer.attend if args.child_impl == "longformer" else longformer.dense_reference

    def fn(params, gparams, x, segment, glob):
        lp = longformer.plan(segment, glob, (args.window,), args.globals).at_layer(0)
        return attn(params, gparams, x, lp)

    compiled = jax.jit(fn).lower(params, gparams, x, segment, glob).compile()
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, gparams, x, segment, glob))
    print(json.dumps({"time": time.perf_counter() - start}))


def run_child(args, impl: str, t: int) -> dict:
    """One measurement in a fresh process: ``{'peak_mib', 'time', 'note'}``."""
    argv = [sys.executable, os.path.abspath(__file__), "--child-impl", impl]
    argv += ["--child-len", str(t), "--heads", str(args.heads), "--head-dim", str(args.head_dim)]
    argv += ["--batch", str(args.batch), "--window", str(args.window)]
    argv += ["--globals", str(args.globals)]
    return measure(argv, args.cap_gib)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--globals", type=int, default=16)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cap-gib", type=float, default=12.0)
    ap.add_argument("--child-impl", help=argparse.SUPPRESS)
    ap.add_argument("--child-len", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_impl:
        return child(args)

    print(
        f"Longformer self-attention forward, float32, B={args.batch} N={args.heads} "
        f"H={args.head_dim}, window {args.window}, {args.globals} global tokens; one fresh "
        "process per row, peak = child ru_maxrss"
    )
    head = f"{'T':>6} {'impl':>10} {'peak MiB':>9} {'extra MiB':>9} {'time s':>8}  note"
    print(head)
    print("-" * len(head))
    for t in sorted(args.sizes):
        base = run_child(args, "baseline", t)["peak_mib"]
        for impl in IMPLS:
            row = run_child(args, impl, t)
            peak = f"{row['peak_mib']:.0f}"
            extra = "" if row["time"] is None else f"{row['peak_mib'] - base:.0f}"
            secs = "" if row["time"] is None else f"{row['time']:.2f}"
            print(f"{t:>6} {impl:>10} {peak:>9} {extra:>9} {secs:>8}  {row['note']}")
            for line in row.get("err", []):
                print(f"{'':>6} {line}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
