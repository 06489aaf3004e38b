"""Weight-only quantization and the int8 KV cache on a trained run: bytes, decode speed, quality.

Every figure is measured in this run, on the run's own weights (default ``runs/tiny``, the tiny
GPT-2 of ``make train``), and reported with its ratio to float32:

1. **Bytes**: the params as stored (:func:`llmzoo.compress.param_bytes`: int4 packed two a
   byte, scales included), in total and of the quantized matrices only (every block matmul
   weight; embeddings, norms and biases stay float), and the KV cache of a ``--kv-batch`` x
   ``--kv-context`` generation (``jax.eval_shape`` of ``init_cache``: int8 values plus a float32
   scale per token and KV head).
2. **Decode tokens/s**: greedy :func:`llmzoo.generate.generate` of ``--new`` tokens after short
   prompts in the corpus' style, batch 1 and 8, the compile call excluded, the median of
   ``--repeats`` runs taken round-robin over the variants; with the fraction of the generated
   tokens equal to float32's (greedy continuations part for good at their first differing
   token, so this falls fast even when each step's logits are close).
3. **Perplexity** on the run's validation split (:func:`llmzoo.eval.evaluate_run` on runs that
   :func:`llmzoo.compress_run.quantize_run` writes to a temporary folder), with the delta; int4
   also calibrated by GPTQ (:mod:`llmzoo.compress.gptq`, 8 batches of the training split).

Weight-only quantization saves memory traffic, not arithmetic: the matmuls still run in the
compute dtype after the integers are converted and scaled. It speeds decoding up where decoding
is memory-bound (large models on GPU/TPU, where reading the weights each step dominates). On a
CPU with a model this small, the weights fit in cache, a step is bound by dispatch and compute,
and the conversion is extra work, so int8/int4 decode can be slower than float32 here; likewise
the int8 KV cache quantizes every new entry and converts every block it reads, which pays off
only when reading a long cache from memory dominates a step. bfloat16 on CPU is emulated by XLA
and is usually slower than float32 too.

    .venv/bin/python benchmarks/compress.py                            # runs/tiny (minutes)
    .venv/bin/python benchmarks/compress.py --new 32 --repeats 1 --eval-batches 2   # quick
    .venv/bin/python benchmarks/compress.py --tables perplexity        # the perplexity table only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmzoo import compress, run_dir  # noqa: E402
from llmzoo.compress_run import quantize_run  # noqa: E402
from llmzoo.config import QuantConfig  # noqa: E402
from llmzoo.eval import evaluate_run  # noqa: E402
from llmzoo.generate import generate  # noqa: E402
from llmzoo.models import registry  # noqa: E402


def variants(cfg, params, group_size: int) -> dict:
    """``name -> (model cfg, params)``: float32, bfloat16, int8, int4 weights, and the int8 KV
    cache with float32 and with int8 weights."""
    specs = registry.get(cfg.kind).param_specs(cfg)
    f32 = dataclasses.replace(cfg, dtype="float32")
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    int8 = compress.quantize_params(params, specs, QuantConfig(method="int8"))
    int4 = compress.quantize_params(
        params, specs, QuantConfig(method="int4", group_size=group_size)
    )
    kv8 = dataclasses.replace(f32, kv_cache_dtype="int8")
    return {
        "float32": (f32, params),
        "bfloat16": (dataclasses.replace(cfg, dtype="bfloat16"), bf16),
        "int8": (f32, int8),
        "int4": (f32, int4),
        "float32 + int8 KV": (kv8, params),
        "int8 + int8 KV": (kv8, int8),
    }


def kv_bytes(cfg, params, batch: int, context: int) -> int:
    kind = registry.get(cfg.kind)
    tokens = jnp.zeros((batch, 1), jnp.int32)
    shapes = jax.eval_shape(
        lambda: kind.init_cache(params, {"tokens": tokens}, cfg=cfg, max_len=context)
    )
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def bytes_table(rows: dict, paths: list[str], args) -> None:
    base = {}
    print(f"\nBytes (KV cache: batch {args.kv_batch}, context {args.kv_context})")
    print(f"{'variant':<20}{'params':>12}{'ratio':>7}{'quantized':>12}{'ratio':>7}"
          f"{'KV cache':>12}{'ratio':>7}")  # fmt: skip
    for name, (cfg, params) in rows.items():
        sizes = (
            compress.param_bytes(params),
            compress.param_bytes(params, paths),
            kv_bytes(cfg, params, args.kv_batch, args.kv_context),
        )
        base = base or dict(enumerate(sizes))
        cells = "".join(f"{s:>12,}{s / base[i]:>6.3f}x" for i, s in enumerate(sizes))
        print(f"{name:<20}{cells}")


# Prompts in the style of the default run's corpus (Python's documentation).
PROMPTS = (
    "The list type is a mutable sequence",
    "A dictionary maps keys to values, and",
    "To open a file for reading, use",
    "The function returns None if",
    "Exceptions are raised when",
    "The module defines the following classes:",
    "An iterator is an object that",
    "This method is called when",
)


def prompt_batch(tokenizer, batch: int, length: int) -> list[list[int]]:
    """``batch`` prompts of the run's corpus style, cut to their first ``length`` tokens."""
    return [tokenizer.encode(PROMPTS[i % len(PROMPTS)])[:length] for i in range(batch)]


def timed(cfg, params, prompts, new: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = generate(params, prompts, cfg=cfg, max_new_tokens=new)
    return time.perf_counter() - t0, np.asarray(out)


def speed_table(rows: dict, tokenizer, args) -> None:
    """Compiles every (variant, batch) once, then times them round-robin ``--repeats`` times
    (so that load from other processes falls on all alike); the median of each."""
    batches = [int(b) for b in args.batches.split(",")]
    cases = [(name, b) for name in rows for b in batches]
    prompts = {b: prompt_batch(tokenizer, b, args.prompt) for b in batches}
    outs = {(n, b): timed(*rows[n], prompts[b], args.new)[1] for n, b in cases}  # compile
    times = {case: [] for case in cases}
    for _ in range(args.repeats):
        for n, b in cases:
            times[n, b].append(timed(*rows[n], prompts[b], args.new)[0])
    print(f"\nDecode tokens/s (greedy, prompts of <= {args.prompt} tokens, {args.new} new tokens, "
          f"median of {args.repeats}; same: fraction of tokens equal to float32's)")  # fmt: skip
    print(f"{'variant':<20}" + "".join(f"{f'B={b}':>10}{'ratio':>7}{'same':>6}" for b in batches))
    base = next(iter(rows))
    for name in rows:
        cells = ""
        for b in batches:
            tps, ref = (b * args.new / statistics.median(times[n, b]) for n in (name, base))
            same = float(np.mean(outs[name, b] == outs[base, b]))
            cells += f"{tps:>10.1f}{tps / ref:>6.2f}x{same:>6.2f}"
        print(f"{name:<20}{cells}", flush=True)


def perplexity_table(args) -> None:
    print(f"\nValidation perplexity ({args.run}, {args.eval_batches or 'all'} eval batches)")
    print(f"{'variant':<20}{'loss':>9}{'ppl':>9}{'delta ppl':>11}{'tokens':>9}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("float32", "int8", "int4", "int4 GPTQ"):
            path = args.run
            if name != "float32":
                method, calibration = (name.split() + ["none"])[:2]
                path = quantize_run(
                    args.run, f"{tmp}/{method}-{calibration}", method=method,
                    group_size=args.group_size, calibration=calibration.lower(),
                )  # fmt: skip
            r = evaluate_run(path, max_batches=args.eval_batches)
            base = base or r
            print(f"{name:<20}{r['loss']:>9.4f}{r['ppl']:>9.3f}{r['ppl'] - base['ppl']:>+11.3f}"
                  f"{r['tokens']:>9}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/tiny", help="a trained float run")
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size")
    parser.add_argument("--batches", default="1,8", help="decode batch sizes")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="new tokens per row")
    parser.add_argument("--repeats", type=int, default=5, help="timed decodes (median)")
    parser.add_argument("--kv-batch", type=int, default=8, help="KV cache bytes: batch")
    parser.add_argument("--kv-context", type=int, default=256, help="KV cache bytes: tokens")
    parser.add_argument("--eval-batches", type=int, default=None, help="default: the run's")
    parser.add_argument("--tables", default="bytes,speed,perplexity", help="which to print")
    args = parser.parse_args()

    cfg, params, step = run_dir.load_params(args.run)
    model = cfg.model
    print(f"{args.run} (step {step}): {model.family}, D={model.d_model}, L={model.n_layers}, "
          f"N={model.n_heads}, K={model.kv_heads}, H={model.dim_per_head}, V={model.vocab_size}; "
          f"{jax.devices()[0].platform}, {os.cpu_count()} CPUs")  # fmt: skip
    rows = variants(model, params, args.group_size)
    paths = compress.quant_paths(registry.get(model.kind).param_specs(model), QuantConfig())
    tables = args.tables.split(",")
    if "bytes" in tables:
        bytes_table(rows, paths, args)
    if "speed" in tables:
        speed_table(rows, run_dir.read_tokenizer(args.run), args)
    if "perplexity" in tables:
        perplexity_table(args)


if __name__ == "__main__":
    main()
