"""Train-step throughput and attention speed, each against a reference measured in the same run.

Prints tokens/s and model FLOP utilisation-style figures for llmzoo's jitted train step, and the
time of llmzoo's attention relative to ``jax.nn.dot_product_attention`` on the same inputs.

    .venv/bin/python benchmarks/train_step.py [--preset gpt2-tiny] [--batch 8] [--seq 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo.config import OptimConfig
from llmzoo.layers.attention import attention_mask, dot_product_attention
from llmzoo.models import decoder
from llmzoo.objectives.losses import token_loss
from llmzoo.params import param_count
from llmzoo.presets import get_model_preset
from llmzoo.train.optimizer import make_optimizer
from llmzoo.train.step import TrainState, make_steps


def timeit(fn, *args, repeats=5):
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_train_step(cfg, batch, seq):
    specs = decoder.param_specs(cfg)
    tx = make_optimizer(OptimConfig(), 1000, specs)
    params = decoder.init(jax.random.key(0), cfg)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    train_fn, _ = make_steps(token_loss, cfg, tx, 1)
    toks = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, cfg.vocab_size)
    b = {
        "tokens": toks[:, :-1],
        "targets": toks[:, 1:],
        "positions": jnp.broadcast_to(jnp.arange(seq), (batch, seq)),
        "segment_ids": jnp.ones((batch, seq), jnp.int32),
        "loss_mask": jnp.ones((batch, seq), jnp.float32),
    }
    key = jax.random.key(0)
    state, m = train_fn(state, b, key)  # compile
    jax.block_until_ready(m)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        state, m = train_fn(state, b, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    n = param_count(params)
    flops = 6 * n * batch * seq + 12 * cfg.n_layers * cfg.d_model * seq * batch * seq
    return dt, batch * seq / dt, flops / dt, n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2-tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    print(
        f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{jax.device_count()} device(s)"
    )

    cfg = dataclasses.replace(get_model_preset(args.preset), dtype=args.dtype)
    dt, tps, flops, n = bench_train_step(cfg, args.batch, args.seq)
    print(
        f"train step  {args.preset} ({n / 1e6:.1f}M params) B={args.batch} T={args.seq}: "
        f"{dt * 1e3:.1f} ms/step, {tps:,.0f} tokens/s, {flops / 1e9:.1f} GFLOP/s"
    )

    b, t, n_heads, k, h = args.batch, args.seq, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
    keys = jax.random.split(jax.random.key(2), 3)
    dt_ = jnp.dtype(args.dtype)
    q = jax.random.normal(keys[0], (b, t, n_heads, h), dt_)
    kk = jax.random.normal(keys[1], (b, t, k, h), dt_)
    v = jax.random.normal(keys[2], (b, t, k, h), dt_)
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    ours = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, mask=attention_mask(pos, pos)))
    ref = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
    t_ours, t_ref = timeit(ours, q, kk, v), timeit(ref, q, kk, v)
    err = float(
        jnp.abs(ours(q, kk, v).astype(jnp.float32) - ref(q, kk, v).astype(jnp.float32)).max()
    )
    print(
        f"attention   B={b} T={t} N={n_heads} K={k} H={h}: llmzoo {t_ours * 1e3:.2f} ms, "
        f"jax.nn.dot_product_attention {t_ref * 1e3:.2f} ms, ratio {t_ours / t_ref:.2f}x, "
        f"max abs diff {err:.1e}"
    )


if __name__ == "__main__":
    main()
