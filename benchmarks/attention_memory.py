"""Attention memory: dense against blockwise, forward and forward+backward, by sequence length.

Each measurement runs in a fresh subprocess: causal self-attention of random float32 inputs
``q, k, v [B, T, N, H]`` (default B=1, N=8 heads, H=64), compiled ahead of time, then run once
and timed. Peak memory is the child's ``ru_maxrss`` (``os.wait4``); *extra* is that minus the
peak of a baseline child of the same length that imports JAX and builds the inputs but does not
attend. The goal: blockwise forward+backward at 16k tokens within 1 GiB of extra memory.

Dense attention materialises [B, N, T, T] logits, so it is run only up to ``--dense-max`` tokens
(8k by default), and every child is killed once its resident set passes ``--cap-gib``: such runs
print ``OOM/skipped``.

    .venv/bin/python benchmarks/attention_memory.py [--sizes 1024 2048 4096 8192 16384]
        [--heads 8] [--head-dim 64] [--batch 1] [--block 512] [--dense-max 8192] [--cap-gib 12]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

from peak_memory import measure  # benchmarks/ is on sys.path when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MODES = ("fwd", "fwd+bwd")


def child(args) -> None:
    """Runs one measurement in this process and prints ``{"time": seconds}`` as JSON."""
    import jax
    import jax.numpy as jnp

    from llmzoo.layers.attention import MaskRule, dot_product_attention
    from llmzoo.layers.blockwise import blockwise_attention

    b, t, n, h = args.batch, args.child_len, args.heads, args.head_dim
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (b, t, n, h), jnp.float32) for key in keys)
    jax.block_until_ready((q, k, v))
    if args.child_impl == "baseline":
        print(json.dumps({"time": 0.0}))
        return
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    rule = MaskRule(pos, pos)
    if args.child_impl == "dense":
        attn = lambda q, k, v: dot_product_attention(q, k, v, mask=rule.dense_mask())
    else:
        size = args.block
        attn = lambda q, k, v: blockwise_attention(q, k, v, rule, block_q=size, block_k=size)
    fn = attn
    if args.child_mode == "fwd+bwd":
        fn = jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v)), argnums=(0, 1, 2))
    compiled = jax.jit(fn).lower(q, k, v).compile()
    start = time.perf_counter()
    jax.block_until_ready(compiled(q, k, v))
    print(json.dumps({"time": time.perf_counter() - start}))


def run_child(args, impl: str, mode: str, t: int) -> dict:
    """One measurement in a fresh process: ``{'peak_mib', 'time', 'note'}``."""
    argv = [sys.executable, os.path.abspath(__file__), "--child-impl", impl, "--child-mode"]
    argv += [mode, "--child-len", str(t), "--heads", str(args.heads)]
    argv += ["--head-dim", str(args.head_dim), "--batch", str(args.batch)]
    argv += ["--block", str(args.block)]
    return measure(argv, args.cap_gib)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--dense-max", type=int, default=8192)
    ap.add_argument("--cap-gib", type=float, default=12.0)
    ap.add_argument("--child-impl", help=argparse.SUPPRESS)
    ap.add_argument("--child-mode", help=argparse.SUPPRESS)
    ap.add_argument("--child-len", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_impl:
        return child(args)

    print(
        f"causal self-attention, float32, B={args.batch} N={args.heads} H={args.head_dim}, "
        f"blockwise block {args.block}; one fresh process per row, peak = child ru_maxrss"
    )
    head = f"{'T':>6} {'impl':>9} {'pass':>8} {'peak MiB':>9} {'extra MiB':>9} {'time s':>8}  note"
    print(head)
    print("-" * len(head))
    for t in sorted(args.sizes):
        base = run_child(args, "baseline", "fwd", t)["peak_mib"]
        for mode in MODES:
            for impl in ("dense", "blockwise"):
                if impl == "dense" and t > args.dense_max:
                    row = {"peak_mib": None, "time": None, "note": "OOM/skipped (--dense-max)"}
                else:
                    row = run_child(args, impl, mode, t)
                peak = "" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
                extra = "" if row["time"] is None else f"{row['peak_mib'] - base:.0f}"
                secs = "" if row["time"] is None else f"{row['time']:.2f}"
                print(f"{t:>6} {impl:>9} {mode:>8} {peak:>9} {extra:>9} {secs:>8}  {row['note']}")
                for line in row.get("err", []):
                    print(f"{'':>6} {line}")
                sys.stdout.flush()
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this driver process: {self_peak:.0f} MiB; baselines include JAX and the inputs)")


if __name__ == "__main__":
    main()
