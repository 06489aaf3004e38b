"""Train-step throughput against Hugging Face PyTorch and matmul peaks measured in the same run.

A GPT-2-like model (default V=8192, D=512, 6 layers, 8 heads, batch 8 x 256 tokens, AdamW with
global-norm clipping) is built as a random ``transformers`` GPT2LMHeadModel, saved, and loaded
into llmzoo with :func:`llmzoo.hf.load`, so both sides train the same weights. Model FLOPs per
token are ``6 N + 12 L D T`` (N params including the embedding table, which is also the LM
head; Kaplan et al. 2020 / PaLM appendix B). Achieved FLOP/s are compared with a 2048^3 float32
matmul in JAX and in torch, timed in the same run. All timed candidates are interleaved round by
round, so that load from other processes spreads over all of them; medians are reported.

``--unrolled`` also times the same step with ``model.scan_layers=false`` (the layers unrolled
instead of one ``lax.scan``); ``--remat a,b`` also times it under those remat policies
(``model.remat``), interleaved with the rest. The breakdown (``--breakdown``) times the loss
forward, forward + backward, and the optimizer update alone, and prints XLA's
``cost_analysis`` FLOPs of the compiled step.

    .venv/bin/python benchmarks/train_step.py [--vocab 8192 --d-model 512 --layers 6 --heads 8]
        [--batch 8 --seq 256] [--dtype float32] [--rounds 5] [--no-compile] [--breakdown]
        [--unrolled] [--remat dots_saveable,dots_with_no_batch_dims_saveable]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import llmzoo.hf
from llmzoo.config import OptimConfig
from llmzoo.layers.attention import attention_mask, dot_product_attention
from llmzoo.models import decoder
from llmzoo.objectives.losses import token_loss
from llmzoo.params import param_count
from llmzoo.train.optimizer import make_optimizer
from llmzoo.train.step import TrainState, make_steps

MATMUL = 2048
MATMUL_REPEATS = 8  # timed back to back, so that a matmul sample sees load as long as a step does


def interleave(candidates: dict, rounds: int) -> dict:
    """Runs each ``name -> fn()`` once to warm up, then ``rounds`` times in turn; median seconds."""
    for fn in candidates.values():
        fn()
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            time.sleep(0.2)  # let the other framework's worker threads stop spinning
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def matmul_fns():
    """2048^3 float32 matmuls in JAX and torch, ``MATMUL_REPEATS`` a call: ``{name: fn}``."""
    import torch

    a = jax.random.normal(jax.random.key(0), (MATMUL, MATMUL), jnp.float32)
    mm = jax.jit(jnp.matmul)
    ta = torch.randn(MATMUL, MATMUL)

    def jax_mm():
        for _ in range(MATMUL_REPEATS):
            mm(a, a).block_until_ready()

    def torch_mm():
        for _ in range(MATMUL_REPEATS):
            torch.mm(ta, ta)

    return {"jax matmul": jax_mm, "torch matmul": torch_mm}


def hf_model(args, path):
    """A random GPT2LMHeadModel saved to ``path``; returns the torch model."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=args.vocab,
        n_embd=args.d_model,
        n_layer=args.layers,
        n_head=args.heads,
        n_positions=args.seq,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(config).float()
    model.config._attn_implementation = "eager"
    model.save_pretrained(path)
    return model


def make_batch(args):
    toks = np.random.default_rng(1).integers(0, args.vocab, (args.batch, args.seq + 1))
    return {
        "tokens": jnp.asarray(toks[:, :-1], jnp.int32),
        "targets": jnp.asarray(toks[:, 1:], jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(args.seq, dtype=jnp.int32), toks[:, 1:].shape),
        "segment_ids": jnp.ones((args.batch, args.seq), jnp.int32),
        "loss_mask": jnp.ones((args.batch, args.seq), jnp.float32),
    }


def llmzoo_step(cfg, params, batch):
    """A jitted llmzoo train step; returns ``(fn, train_fn, state)`` with fn() one blocking step."""
    tx = make_optimizer(OptimConfig(), 1000, decoder.param_specs(cfg))
    params = jax.tree.map(jnp.copy, params)  # the step donates its state
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    train_fn, _ = make_steps(token_loss, cfg, tx, 1)
    holder = {"state": state}
    key = jax.random.key(0)

    def step():
        holder["state"], m = train_fn(holder["state"], batch, key)
        return jax.block_until_ready(m)

    return step, train_fn, tx


def torch_step(model, batch, *, compiled: bool):
    """One blocking torch train step (AdamW + clipping, as llmzoo's defaults)."""
    import torch

    opt_cfg = OptimConfig()
    opt = torch.optim.AdamW(
        model.parameters(), lr=opt_cfg.lr, betas=(opt_cfg.b1, opt_cfg.b2), eps=opt_cfg.eps
    )
    tokens = torch.from_numpy(np.asarray(batch["tokens"])).long()
    targets = torch.from_numpy(np.asarray(batch["targets"])).long()

    def loss_fn():
        logits = model(input_ids=tokens).logits
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    forward = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        opt.zero_grad(set_to_none=True)
        loss = forward()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt_cfg.clip_norm)
        opt.step()
        return float(loss)

    return step


def breakdown_fns(cfg, params, batch, tx) -> dict:
    """``{name: fn}`` timing the loss forward, forward + backward, and the optimizer alone."""
    loss_fn = lambda p, b: token_loss(p, b, None, cfg=cfg)[0]  # noqa: E731
    loss, grad = jax.jit(loss_fn), jax.jit(jax.grad(loss_fn))
    opt_state = tx.init(params)
    grads = grad(params, batch)
    update = jax.jit(tx.update)
    return {
        "  forward": lambda: loss(params, batch).block_until_ready(),
        "  forward+backward": lambda: jax.block_until_ready(grad(params, batch)),
        "  optimizer": lambda: jax.block_until_ready(update(grads, opt_state, params)),
    }


def xla_flops(train_fn, tx, params, batch) -> float:
    """XLA's ``cost_analysis`` FLOPs of the compiled step (a scan body is counted once)."""
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    cost = train_fn.lower(state, batch, jax.random.key(0)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost.get("flops", float("nan"))


def bench_attention(cfg, args):
    """llmzoo's dense attention against ``jax.nn.dot_product_attention`` (XLA), forward only."""
    b, t, n, h = args.batch, args.seq, cfg.n_heads, cfg.dim_per_head
    keys = jax.random.split(jax.random.key(2), 3)
    q, k, v = (jax.random.normal(kk, (b, t, n, h), jnp.float32) for kk in keys)
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    ours = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, mask=attention_mask(pos, pos)))
    ref = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
    times = interleave(
        {
            "ours": lambda: ours(q, k, v).block_until_ready(),
            "ref": lambda: ref(q, k, v).block_until_ready(),
        },
        args.rounds,
    )
    err = float(jnp.abs(ours(q, k, v) - ref(q, k, v)).max())
    print(
        f"attention B={b} T={t} N={n} H={h}: llmzoo {times['ours'] * 1e3:.2f} ms, "
        f"jax.nn.dot_product_attention {times['ref'] * 1e3:.2f} ms, "
        f"ratio {times['ours'] / times['ref']:.2f}x, max abs diff {err:.1e}"
    )


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", default="float32", help="llmzoo's compute dtype")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile reference")
    ap.add_argument("--no-torch", action="store_true", help="skip both torch references")
    ap.add_argument("--breakdown", action="store_true", help="time forward/backward/optimizer")
    ap.add_argument(
        "--unrolled", action="store_true", help="also time model.scan_layers=false (no lax.scan)"
    )
    ap.add_argument("--remat", default="", help="comma-separated model.remat policies to add")
    return ap.parse_args()


def main():
    args = parse_args()
    print(
        f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{jax.device_count()} device(s); jax {jax.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = hf_model(args, tmp)
        cfg, params = llmzoo.hf.load(tmp)
    cfg = dataclasses.replace(cfg, dtype=args.dtype)
    batch = make_batch(args)
    n = param_count(params)
    tokens = args.batch * args.seq
    flops_per_token = 6 * n + 12 * cfg.n_layers * cfg.d_model * args.seq
    step_flops = flops_per_token * tokens
    print(
        f"model: V={cfg.vocab_size} D={cfg.d_model} L={cfg.n_layers} N={cfg.n_heads} "
        f"({n / 1e6:.2f}M params), B={args.batch} T={args.seq}, dtype {args.dtype}; "
        f"6N + 12LDT = {flops_per_token / 1e6:.1f} MFLOP/token, {step_flops / 1e9:.1f} GFLOP/step"
    )

    step, train_fn, tx = llmzoo_step(cfg, params, batch)
    candidates = {"llmzoo": step, **matmul_fns()}
    if args.unrolled:
        unrolled = dataclasses.replace(cfg, scan_layers=False)
        candidates["llmzoo unrolled"] = llmzoo_step(unrolled, params, batch)[0]
    remats = [f"llmzoo {p}" for p in args.remat.split(",") if p]
    for name, policy in zip(remats, filter(None, args.remat.split(",")), strict=True):
        candidates[name] = llmzoo_step(dataclasses.replace(cfg, remat=policy), params, batch)[0]
    if not args.no_torch:
        import copy

        candidates["hf eager"] = torch_step(model, batch, compiled=False)
        if not args.no_compile:
            t0 = time.perf_counter()
            compiled = torch_step(copy.deepcopy(model), batch, compiled=True)
            compiled()
            print(f"torch.compile warm-up: {time.perf_counter() - t0:.0f} s")
            candidates["hf compiled"] = compiled
    if args.breakdown:
        candidates |= breakdown_fns(cfg, params, batch, tx)
    times = interleave(candidates, args.rounds)
    mm_flops = 2 * MATMUL**3 * MATMUL_REPEATS
    peaks = {"jax": mm_flops / times["jax matmul"], "torch": mm_flops / times["torch matmul"]}
    print(
        f"matmul {MATMUL}^3: jax {peaks['jax'] / 1e9:.0f} GFLOP/s, torch "
        f"{peaks['torch'] / 1e9:.0f} GFLOP/s"
    )
    for name in ("llmzoo", "llmzoo unrolled", *remats, "hf eager", "hf compiled"):
        if name not in times:
            continue
        t = times[name]
        peak = peaks["jax" if name.startswith("llmzoo") else "torch"]
        print(
            f"{name:<40} {t * 1e3:8.1f} ms/step  {tokens / t:8,.0f} tokens/s  "
            f"{step_flops / t / 1e9:6.1f} GFLOP/s  {step_flops / t / peak:5.1%} of its matmul"
            + ("" if name == "llmzoo" else f"  llmzoo speed-up {t / times['llmzoo']:.2f}x")
        )
    if args.breakdown:
        print("llmzoo breakdown:")
        for name in [n for n in times if n.startswith("  ")]:
            print(f"{name:<20} {times[name] * 1e3:8.1f} ms")
        print(f"  XLA cost_analysis: {xla_flops(train_fn, tx, params, batch) / 1e9:.1f} GFLOP/step")
    bench_attention(cfg, args)


if __name__ == "__main__":
    main()
