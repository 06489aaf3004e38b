"""Perplexity against sparsity: a trained run magnitude-pruned (0, 25, 50, 75% global; 50% per
layer; 2:4), each written with ``llmzoo prune``'s :func:`llmzoo.compress_run.prune_run` to a
temporary directory and evaluated by :func:`llmzoo.eval.evaluate_run` on the run's validation
split (the same batches for every row). With ``--finetune-steps N``, the 50% global run is
also fine-tuned N steps with its masks fixed (``train init_from=``), beside the dense run
fine-tuned the same N steps, to show what training recovers.

    .venv/bin/python benchmarks/prune.py                          # runs/tiny, a few minutes
    .venv/bin/python benchmarks/prune.py --run runs/tiny --finetune-steps 100
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

from llmzoo import compress_run
from llmzoo import run_dir as rd
from llmzoo.eval import evaluate_run
from llmzoo.train.loop import train

ROWS = [  # (label, prune_run keyword arguments); None: the dense run itself
    ("dense (0%)", None),
    ("25% global", dict(sparsity=0.25)),
    ("50% global", dict(sparsity=0.5)),
    ("75% global", dict(sparsity=0.75)),
    ("50% layer", dict(sparsity=0.5, scope="layer")),
    ("2:4", dict(nm="2:4")),
]


def finetune(init_from: str, out: str, steps: int, lr: float) -> str:
    """Trains ``init_from`` ``steps`` more steps on its own data (a pruned run keeps its zeros)."""
    cfg = rd.read_config(init_from)
    optim = dataclasses.replace(cfg.optim, lr=lr, warmup_steps=min(10, steps // 4))
    cfg = dataclasses.replace(cfg, init_from=init_from, run_dir=out, steps=steps, optim=optim,
                              eval_every=steps, ckpt_every=steps, log_every=steps)  # fmt: skip
    train(cfg, progress=False, log=lambda *a, **k: None, extras=False)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/tiny", help="a trained run directory (runs/tiny)")
    p.add_argument("--max-batches", type=int, default=None, help="eval batches (the run's)")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune 50%% N steps (0)")
    p.add_argument("--lr", type=float, default=5e-4, help="fine-tuning peak lr (5e-4)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmzoo-prune-") as tmp:
        rows, dense = [], None
        for label, kwargs in ROWS:
            run = args.run
            sparsity = 0.0
            if kwargs is not None:
                run = compress_run.prune_run(args.run, os.path.join(tmp, label.replace(" ", "_")),
                                             **kwargs)  # fmt: skip
                sparsity = compress_run.measured_sparsity(run)
            r = evaluate_run(run, max_batches=args.max_batches)
            dense = dense or r["ppl"]
            rows.append((label, sparsity, r["loss"], r["ppl"], r["ppl"] / dense, r["tokens"]))
        if args.finetune_steps:
            n = args.finetune_steps
            for label, src in (
                ("dense", args.run),
                ("50% global", os.path.join(tmp, "50%_global")),
            ):
                out = finetune(src, os.path.join(tmp, f"ft_{len(rows)}"), n, args.lr)
                s = compress_run.measured_sparsity(out) if label != "dense" else 0.0
                r = evaluate_run(out, max_batches=args.max_batches)
                rows.append((f"{label} +{n} steps", s, r["loss"], r["ppl"], r["ppl"] / dense,
                             r["tokens"]))  # fmt: skip
    print(f"\n{args.run}: validation perplexity by sparsity ({rows[0][5]} tokens; the block "
          "matrices attn/w[qkvo], mlp/w_* pruned by |w|)\n")  # fmt: skip
    print("| pruning | zeros in the matrices | val loss | ppl | ppl / dense |")
    print("|---|---:|---:|---:|---:|")
    for label, s, loss, ppl, ratio, _ in rows:
        print(f"| {label} | {s:.2%} | {loss:.4f} | {ppl:.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
