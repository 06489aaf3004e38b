"""Decoding speed against Hugging Face PyTorch ``GPT2LMHeadModel`` with the same weights.

A random-weight GPT-2 of the given shape is saved with ``save_pretrained`` and loaded into llmzoo
through :func:`llmzoo.hf.load`. Every row is measured for llmzoo and the reference in the same
run, alternating them, and reported as the best of ``--repeats`` (which resists load from other
processes) with their ratio: batch-1 greedy tokens/s, with a check that the tokens are identical,
against the memory-bandwidth bound from a same-run matvec; per-token decode time at given
contexts (prefill to that context, then time decode steps); the same in bfloat16 (weights and
KV cache); and batched greedy tokens/s. ``--threads`` (default 1) gives both the same CPU threads.
On a GPU (JAX's default backend, and torch built with CUDA) both run there: the Hugging Face
model and its inputs move to ``cuda`` and its timings synchronise the device.

    .venv/bin/python benchmarks/decode.py                      # the full config (minutes)
    .venv/bin/python benchmarks/decode.py --new 32 --contexts 256 --batches 1,8 --repeats 1
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import tempfile
import time


def _threads() -> int:
    """``--threads`` (default 1), read before JAX starts: its CPU thread pool is sized once."""
    for i, arg in enumerate(sys.argv):
        if arg.startswith("--threads"):
            return int(arg.split("=")[1] if "=" in arg else sys.argv[i + 1])
    return 1


THREADS = _threads()
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + f" --xla_cpu_multi_thread_eigen={str(THREADS > 1).lower()}"
    + f" intra_op_parallelism_threads={THREADS}"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import llmzoo.hf  # noqa: E402
from llmzoo.generate import generate  # noqa: E402
from llmzoo.models import decoder  # noqa: E402

ON_GPU = jax.default_backend() == "gpu" and torch.cuda.is_available()
TORCH_DEVICE = "cuda" if ON_GPU else "cpu"


def sync():
    if ON_GPU:
        torch.cuda.synchronize()


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def build(args):
    """The Hugging Face model and llmzoo's ``(cfg, params)`` loaded from its saved weights."""
    config = transformers.GPT2Config(
        vocab_size=args.vocab,
        n_embd=args.d_model,
        n_layer=args.layers,
        n_head=args.heads,
        n_positions=max(args.contexts + [args.prompt + args.new]) + args.steps + 1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        cfg, params = llmzoo.hf.load(path)
    return model.to(TORCH_DEVICE), dataclasses.replace(cfg, dtype="float32"), params


def bandwidth_bound(n_bytes, repeats):
    """GB/s of a float32 matvec over ``n_bytes`` of weights, and the batch-1 bound in tokens/s."""
    cols = 1024
    w = jnp.ones((n_bytes // 4 // cols, cols), jnp.float32)
    x = jnp.ones((cols,), jnp.float32)
    matvec = jax.jit(lambda w, x: w @ x)
    matvec(w, x).block_until_ready()
    dt = best_time(lambda: matvec(w, x).block_until_ready(), max(repeats, 10))
    return w.nbytes / dt / 1e9, 1.0 / dt


def hf_greedy(model, prompts, new):
    with torch.no_grad():
        out = model.generate(
            torch.tensor(prompts, device=TORCH_DEVICE),
            attention_mask=torch.ones(
                len(prompts), len(prompts[0]), dtype=torch.long, device=TORCH_DEVICE
            ),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )
    return out[:, len(prompts[0]) :].tolist()


def greedy_row(model, cfg, params, prompts, args):
    """``(llmzoo tok/s, hf tok/s, fraction of identical tokens)`` for one greedy batch."""
    ours = generate(params, prompts, cfg=cfg, max_new_tokens=args.new)  # compile
    ref = hf_greedy(model, prompts, args.new)
    t_ours, t_ref = [], []
    for _ in range(args.repeats):  # alternate the two
        t_ours.append(
            best_time(lambda: generate(params, prompts, cfg=cfg, max_new_tokens=args.new), 1)
        )
        t_ref.append(best_time(lambda: hf_greedy(model, prompts, args.new), 1))
    n = len(prompts) * args.new
    same = np.mean(np.asarray(ours) == np.asarray(ref))
    return n / min(t_ours), n / min(t_ref), float(same)


def llmzoo_step_time(cfg, params, context, args):
    """Seconds per decode step at ``context`` tokens, the steps run in one jitted loop (as
    :func:`llmzoo.generate.generate` runs them); the cache capacity is set by the largest context,
    so a smaller context shows that a step costs the current length, not the capacity."""
    capacity = max(args.contexts) + args.steps + 1
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (1, context)))
    positions = jnp.arange(context, dtype=jnp.int32)[None]

    @functools.partial(jax.jit, donate_argnums=(1,))
    def steps(params, cache, n):
        def body(i, carry):
            cache, tok = carry
            logits, cache = decoder.apply_cached(
                params, tok, cache, cfg=cfg, positions=cache["index"][None, None]
            )
            return cache, jnp.argmax(logits[:, -1:], -1).astype(jnp.int32)

        return jax.lax.fori_loop(0, n, body, (cache, tokens[:, -1:]))[0]

    prefill = jax.jit(decoder.apply_cached, static_argnames=("cfg",), donate_argnums=(2,))
    dparams = jax.jit(lambda p: decoder.decode_params(p, cfg=cfg))(params)
    times = []
    for n in (1, 1, args.steps + 1):  # compile, then one step and steps + 1 after prefill
        cache = decoder.init_cache(dparams, {"tokens": tokens}, cfg=cfg, max_len=capacity)
        _, cache = prefill(dparams, tokens, cache, cfg=cfg, positions=positions)
        jax.block_until_ready(cache)
        t0 = time.perf_counter()
        jax.block_until_ready(steps(dparams, cache, n))
        times.append(time.perf_counter() - t0)
    return (times[2] - times[1]) / args.steps


def hf_step_time(model, context, args):
    tokens = torch.as_tensor(
        np.random.default_rng(1).integers(0, model.config.vocab_size, (1, context)),
        device=TORCH_DEVICE,
    )
    with torch.no_grad():
        out = model(tokens, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        times = []
        for _ in range(args.steps + 1):
            sync()
            t0 = time.perf_counter()
            out = model(tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            sync()
            times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def step_rows(model, cfg, params, args):
    """``[(context, llmzoo s/token, hf s/token)]``, alternating the two per repeat."""
    rows = []
    for context in args.contexts:
        ours, ref = [], []
        for _ in range(args.repeats):
            ours.append(llmzoo_step_time(cfg, params, context, args))
            ref.append(hf_step_time(model, context, args))
        rows.append((context, min(ours), min(ref)))
    return rows


def to_bf16(model, cfg, params):
    cast = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    return model.to(torch.bfloat16), dataclasses.replace(cfg, dtype="bfloat16"), cast


def print_table(title, rows):
    print(f"\n{title}")
    print(f"{'row':<34}{'llmzoo':>12}{'HF':>12}{'ratio':>9}")
    for name, ours, ref, unit, better in rows:
        ratio = ours / ref if better == "higher" else ref / ours
        print(
            f"{name:<34}{ours:>12.2f}{ref:>12.2f}{ratio:>8.2f}x  ({unit}; ratio >1: llmzoo faster)"
        )


def run_precision(model, cfg, params, args, label, bound=None):
    rng = np.random.default_rng(0)
    rows = []
    prompt = rng.integers(0, cfg.vocab_size, (1, args.prompt)).tolist()
    ours, ref, same = greedy_row(model, cfg, params, prompt, args)
    rows.append((f"greedy B=1 P={args.prompt} N={args.new}", ours, ref, "tok/s", "higher"))
    print(f"[{label}] greedy batch 1: identical tokens {same:.1%}")
    if bound:
        print(f"[{label}] llmzoo at {ours / bound:.0%} of the bandwidth bound {bound:.0f} tok/s")
    for context, t_ours, t_ref in step_rows(model, cfg, params, args):
        rows.append((f"decode step at context {context}", t_ours * 1e3, t_ref * 1e3, "ms", "lower"))
    if label == "float32":
        for b in (b for b in args.batches if b > 1):  # batch 1 is the first row
            prompts = rng.integers(0, cfg.vocab_size, (b, args.prompt)).tolist()
            ours, ref, same = greedy_row(model, cfg, params, prompts, args)
            rows.append((f"greedy B={b}", ours, ref, "tok/s", "higher"))
            print(f"[{label}] greedy batch {b}: identical tokens {same:.1%}")
    print_table(f"{label}", rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--contexts", default="256,2048")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--steps", type=int, default=20, help="timed decode steps per context")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument(
        "--threads", type=int, default=1, help="CPU threads for both (1: fair on a shared machine)"
    )
    args = ap.parse_args()
    args.contexts = [int(c) for c in args.contexts.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(THREADS)
    print(
        f"jax {jax.__version__} on {jax.default_backend()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    model, cfg, params = build(args)
    n_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    gbs, bound = bandwidth_bound(n_bytes, args.repeats)
    print(
        f"model {n_bytes / 1e6:.1f} MB float32; matvec {gbs:.1f} GB/s -> batch-1 bound "
        f"{bound:.0f} tok/s ({1e3 / bound:.2f} ms/token)"
    )
    run_precision(model, cfg, params, args, "float32", bound)
    if not args.no_bf16:
        run_precision(*to_bf16(model, cfg, params), args, "bfloat16")


if __name__ == "__main__":
    main()
