"""Accelerator figures: train-step MFU of a ~1B Llama-style model, and fused attention against XLA.

Two measurements, each printed as Markdown rows for ``benchmarks/RESULTS.md`` with the date and
the device:

- **MFU.** One jitted llmzoo train step (AdamW, global-norm clipping) of a Llama-style decoder
  (default D=2048, 16 layers, 16 heads of 128, 8 KV heads, SwiGLU F=5632, V=32000, about 0.9B
  params) on ``--batch`` x ``--seq`` tokens, float32 params and bfloat16 compute. Model FLOPs per
  token are ``6 N + 12 L D T`` (N params with the embeddings; Kaplan et al. 2020 / PaLM
  appendix B), as in ``train_step.py``. MFU divides the achieved FLOP/s by the chip's peak dense
  bfloat16 FLOP/s from :data:`PEAK_BF16` (the device kind, e.g. H100/H200: 989 TFLOP/s), and the
  same figure is also given against an 8192^3 bfloat16 matmul timed in the same run.
- **Attention.** Causal attention, forward and forward + backward, bfloat16 ``[B, T, N, H]``:
  ``jax.nn.dot_product_attention`` with ``implementation='xla'`` and ``'cudnn'``, and llmzoo's
  ``model.attention_impl`` paths (``dense``, ``blockwise``, ``cudnn`` or ``splash``, whichever
  can run), with their ratios to the XLA path. A path that cannot run here prints why.

Run it on the accelerator; ``--tiny`` runs the same code at toy sizes on any backend, to check it
before spending device time.

    python benchmarks/gpu.py                          # a few minutes on one H100/H200
    python benchmarks/gpu.py --tiny                   # seconds, any backend
    python benchmarks/gpu.py --only attention --seqs 2048 8192
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import time

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo.config import OptimConfig
from llmzoo.layers import attention_impl
from llmzoo.layers.attention import MaskRule
from llmzoo.models import decoder
from llmzoo.objectives.losses import token_loss
from llmzoo.params import param_count
from llmzoo.presets import get_model_preset
from llmzoo.train.optimizer import make_optimizer
from llmzoo.train.step import TrainState, make_steps

PEAK_BF16 = {  # dense bfloat16 TFLOP/s by device kind (vendor data sheets, no sparsity)
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5p": 459.0,
    "TPU v6 lite": 918.0,
}


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` (which blocks) after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def device_peak() -> tuple[str, float | None]:
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK_BF16.items() if k.lower() in kind.lower()), None)
    return kind, None if peak is None else peak * 1e12


def matmul_flops(n: int, repeats: int) -> float:
    """Achieved FLOP/s of an ``n^3`` bfloat16 matmul."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    mm = jax.jit(jnp.matmul)
    return 2 * n**3 / timed(lambda: mm(a, a).block_until_ready(), repeats)


def llama_config(args):
    base = get_model_preset("llama-tiny")
    return dataclasses.replace(
        base,
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        d_ff=args.d_ff,
        max_seq_len=args.seq,
        dtype="bfloat16",
        param_dtype="float32",
        remat=args.remat,
        attention_impl=args.attention,
    )


def mfu_rows(args) -> list[str]:
    cfg = llama_config(args)
    specs = decoder.param_specs(cfg)
    n_params = param_count(specs)
    tx = make_optimizer(OptimConfig(), 1000, specs)
    params = jax.jit(lambda k: decoder.init(k, cfg))(jax.random.key(0))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    train_fn, _ = make_steps(token_loss, cfg, tx, 1)
    toks = np.random.default_rng(1).integers(0, cfg.vocab_size, (args.batch, args.seq + 1))
    batch = {
        "tokens": jnp.asarray(toks[:, :-1], jnp.int32),
        "targets": jnp.asarray(toks[:, 1:], jnp.int32),
        "loss_mask": jnp.ones((args.batch, args.seq), jnp.float32),
    }
    holder = {"state": state}

    def step():
        holder["state"], metrics = train_fn(holder["state"], batch, jax.random.key(0))
        jax.block_until_ready(metrics)

    seconds = timed(step, args.repeats)
    tokens = args.batch * args.seq
    flops = tokens * (6 * n_params + 12 * cfg.n_layers * cfg.d_model * args.seq) / seconds
    kind, peak = device_peak()
    matmul = matmul_flops(args.matmul, args.repeats)
    pos = jnp.broadcast_to(jnp.arange(args.seq, dtype=jnp.int32), (args.batch, args.seq))
    impl = attention_impl.resolve_impl(
        cfg.attention_impl,
        dtype=cfg.compute_dtype,
        head_dim=cfg.dim_per_head,
        t=args.seq,
        s=args.seq,
        rule=MaskRule(pos, pos),
    )
    mfu = "unknown peak" if peak is None else f"MFU {flops / peak:.1%}"
    return [
        f"| train step, {n_params / 1e9:.2f}B Llama-style, B={args.batch} T={args.seq}, bf16 "
        f"compute, remat={cfg.remat}, attention={impl} | {seconds * 1e3:.1f} ms, "
        f"{tokens / seconds:,.0f} tok/s | {flops / 1e12:.1f} TFLOP/s, {mfu} | "
        f"{flops / matmul:.1%} of a same-run {args.matmul}^3 bf16 matmul "
        f"({matmul / 1e12:.0f} TFLOP/s) | {kind} |"
    ]


def attention_fns(impl: str, q, k, v, rule):
    """``(forward, forward + backward)`` jitted callables of one implementation, or a reason."""
    if impl in ("xla", "cudnn"):
        f = lambda q, k, v: jax.nn.dot_product_attention(  # noqa: E731
            q, k, v, is_causal=True, implementation=impl
        )
    else:
        plan = attention_impl.plan_attention(rule, impl=impl, dtype=q.dtype, head_dim=q.shape[-1])
        if plan.impl != impl:
            return f"falls back to {plan.impl} here"
        f = lambda q, k, v: attention_impl.attend(q, k, v, plan)  # noqa: E731
    loss = lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32))  # noqa: E731
    fwd, bwd = jax.jit(f), jax.jit(jax.grad(loss, (0, 1, 2)))
    try:
        fwd(q, k, v).block_until_ready()
    except Exception as e:  # noqa: BLE001  (a missing backend kernel: report, go on)
        return f"cannot run: {str(e).splitlines()[0][:80]}"
    return (
        lambda: fwd(q, k, v).block_until_ready(),
        lambda: jax.block_until_ready(bwd(q, k, v)),
    )


def attention_rows(args) -> list[str]:
    rows = []
    for t in args.seqs:
        keys = jax.random.split(jax.random.key(t), 3)
        shape = (args.attn_batch, t, args.heads, args.d_model // args.heads)
        q, k, v = (jax.random.normal(kk, shape, jnp.bfloat16) for kk in keys)
        pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (args.attn_batch, t))
        rule, base, kind = MaskRule(pos, pos), None, device_peak()[0]
        for impl in ("xla", "cudnn", "dense", "blockwise", "splash"):
            fns = attention_fns(impl, q, k, v, rule)
            name = f"jax.nn {impl}" if impl in ("xla", "cudnn") else f"llmzoo {impl}"
            what = f"attention B={shape[0]} T={t} N={shape[2]} H={shape[3]} causal bf16, {name}"
            if isinstance(fns, str):
                rows.append(f"| {what} | {fns} | | | {kind} |")
                continue
            fwd, both = (timed(fn, args.repeats) * 1e3 for fn in fns)
            base = base or (fwd, both)
            rows.append(
                f"| {what} | forward {fwd:.2f} ms | forward+backward {both:.2f} ms | "
                f"{base[0] / fwd:.2f}x, {base[1] / both:.2f}x the speed of jax.nn xla | {kind} |"
            )
    return rows


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="mfu,attention", help="comma-separated: mfu, attention")
    ap.add_argument("--tiny", action="store_true", help="toy sizes, to check the script")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--d-model", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--d-ff", type=int, default=5632)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--remat", default="none", help="model.remat (llmzoo.config.REMAT_POLICIES)")
    ap.add_argument("--attention", default="auto", help="model.attention_impl for the step")
    ap.add_argument("--seqs", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--attn-batch", type=int, default=4)
    ap.add_argument("--matmul", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.tiny:
        args.vocab, args.d_model, args.layers, args.heads, args.kv_heads = 256, 64, 2, 4, 2
        args.d_ff, args.batch, args.seq, args.seqs, args.attn_batch = 128, 2, 128, [256], 1
        args.matmul, args.repeats = 256, 2
    return args


def main():
    args = parse_args()
    today = datetime.date.today().isoformat()
    print(
        f"{today}, jax {jax.__version__}, {jax.devices()[0].device_kind} ({jax.default_backend()})"
    )
    print("| what | time | speed | against | device |\n|---|---|---|---|---|")
    if "mfu" in args.only:
        print("\n".join(mfu_rows(args)), flush=True)
    if "attention" in args.only:
        print("\n".join(attention_rows(args)), flush=True)


if __name__ == "__main__":
    main()
