"""Context extension: train at length T, evaluate at 2T and 4T, one positional scheme per model.

Every model is the same small decoder trained on the same data (the embedded ``pydoc_topics``
corpus by default) with the same budget; only ``model.position`` differs:

- ``learned``: absolute position table of T rows (it cannot run past T at all: a clear error);
- ``sinusoidal``: the fixed sin/cos table of Vaswani et al. (2017), with the token embeddings
  scaled by sqrt(D) as in the paper (``model.embed_scale``; unscaled, the unit-amplitude table
  drowns the 0.02-std embeddings and the model barely learns);
- ``rope``: rotary positions (Su et al., 2021), then the same trained weights evaluated with
  ``rope_scaling`` ``linear`` (position interpolation, Chen et al., 2023), ``ntk`` (NTK-aware
  base change) and ``yarn`` (Peng et al., 2023), each by the factor 4T / T = 4, without and with
  a short fine-tune at length 4T (``+ft``: ``--ft-steps`` steps from the RoPE weights);
- ``alibi``: linear attention biases (Press et al., 2022).

Validation rows of 4T tokens are packed as in training; the loss of each token is attributed to
its position within its document segment (the context it had). The script prints, and writes to
``--out``, a table of the mean loss over positions [0, T), [T, 2T) and [2T, 4T) (``context.md``,
``context.json``) and a loss-by-position plot (``context.png``).

    .venv/bin/python benchmarks/context_extension.py                 # ~10 minutes on 2 cores
    .venv/bin/python benchmarks/context_extension.py --steps 20 --ft-steps 5 --eval-batches 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo import run_dir as ckpt
from llmzoo.config import RopeScaling
from llmzoo.data import make_eval_batches, source_for
from llmzoo.errors import LlmzooError
from llmzoo.models import registry
from llmzoo.presets import resolve_train_config
from llmzoo.train.loop import train

SCHEMES = ("learned", "sinusoidal", "rope", "alibi")
SCALINGS = ("linear", "ntk", "yarn")


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/context_extension")
    p.add_argument("--seq-len", type=int, default=64, help="T, the training length")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--ft-steps", type=int, default=60, help="fine-tune steps at 4T")
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--data-dir", default="data_cache")
    p.add_argument("overrides", nargs="*", help="extra key=value training overrides")
    return p.parse_args(argv)


def _overrides(a, scheme: str, run_dir: str, seq_len: int, steps: int) -> list[str]:
    return [
        f"run_dir={run_dir}",
        f"data.data_dir={a.data_dir}",
        "model.preset=gpt2-tiny",
        "model.vocab_size=2048",
        "data.vocab_size=2048",
        f"model.position={scheme}",
        f"model.embed_scale={scheme == 'sinusoidal'}",
        "model.d_model=128",
        "model.n_heads=4",
        "model.n_layers=3",
        "model.d_ff=512",
        f"model.max_seq_len={seq_len}",
        f"seq_len={seq_len}",
        "batch_size=16",
        f"steps={steps}",
        f"optim.warmup_steps={max(1, steps // 10)}",
        f"eval_every={steps}",
        f"ckpt_every={steps}",
        "eval_batches=4",
        *a.overrides,
    ]


def _train(a, scheme: str, seq_len: int, steps: int, init_from: str = "", name: str = "") -> str:
    run_dir = os.path.join(a.out, f"{name or scheme}{'_ft' if init_from else ''}_{seq_len}")
    extra = [f"init_from={init_from}"] if init_from else []
    cfg = resolve_train_config(None, _overrides(a, scheme, run_dir, seq_len, steps) + extra)
    if not os.path.exists(os.path.join(run_dir, "checkpoints", str(steps))):
        t0 = time.time()
        train(cfg, progress=False, log=lambda *_: None)
        print(f"trained {run_dir} in {time.time() - t0:.0f}s", flush=True)
    return run_dir


def position_losses(cfg, params, batches, length: int) -> np.ndarray:
    """Mean next-token loss by position within the segment: ``[length]`` (NaN where unseen).

    Rows are cut to their first ``length`` tokens.
    """
    apply = jax.jit(lambda p, b: registry.get(cfg.kind).apply(p, b, cfg=cfg)["logits"])
    sums, counts = np.zeros(length), np.zeros(length)
    for b in batches:
        b = {k: np.asarray(v)[:, :length] for k, v in b.items()}
        logits = apply(
            params, {k: jnp.asarray(b[k]) for k in ("tokens", "segment_ids", "positions")}
        )
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -np.asarray(jnp.take_along_axis(logp, jnp.asarray(b["targets"])[..., None], -1))[
            ..., 0
        ]
        keep = b["loss_mask"] > 0
        np.add.at(sums, b["positions"][keep], nll[keep])
        np.add.at(counts, b["positions"][keep], 1)
    with np.errstate(invalid="ignore"):
        return sums / counts


def _evaluate(run_dir: str, batches, length: int, scaling: RopeScaling | None = None):
    """Per-position losses of a run's model at ``length``, or the one-line error it raises."""
    cfg, params, _ = ckpt.load_params(run_dir)
    model = cfg.model
    if scaling is not None:
        model = dataclasses.replace(model, rope_scaling=scaling)
    try:
        return position_losses(model, params, batches, length), None
    except LlmzooError as e:
        return None, str(e)


def _scaling(kind: str, factor: int, seq_len: int) -> RopeScaling:
    return RopeScaling(kind=kind, factor=float(factor), original_max_position_embeddings=seq_len)


def _finetune(a, kind: str, rope_run: str, steps: int) -> str:
    """A copy of the RoPE run's weights with ``rope_scaling`` set, fine-tuned at 4T."""
    t = a.seq_len
    src = os.path.join(a.out, f"rope_{kind}_init")
    if not os.path.exists(src):
        cfg, params, _ = ckpt.load_params(rope_run)
        model = dataclasses.replace(cfg.model, rope_scaling=_scaling(kind, 4, t), max_seq_len=4 * t)
        ckpt.write_run(
            src, dataclasses.replace(cfg, model=model), params, ckpt.tokenizer_path(rope_run)
        )
    return _train(a, "rope", 4 * t, steps, init_from=src, name=f"rope_{kind}")


def _summary(losses: np.ndarray | None, t: int) -> list[float | None]:
    if losses is None:
        return [None, None, None]
    spans = [(0, t), (t, 2 * t), (2 * t, 4 * t)]
    return [float(np.nanmean(losses[lo:hi])) if len(losses) >= hi else None for lo, hi in spans]


def run(a) -> dict:
    """Trains and evaluates every scheme; returns ``{name: {"losses": [...], "error": ...}}``."""
    t = a.seq_len
    runs = {s: _train(a, s, t, a.steps) for s in SCHEMES}
    cfg = resolve_train_config(None, _overrides(a, "rope", runs["rope"], t, a.steps))
    tokenizer = ckpt.read_tokenizer(runs["rope"])
    src = source_for(cfg.data, cfg.data.eval_split)
    batches = make_eval_batches(
        src, tokenizer, seq_len=4 * t, batch_size=8, max_batches=a.eval_batches
    )
    results = {}
    for s in SCHEMES:
        losses, error = _evaluate(runs[s], batches, 4 * t)
        if s == "learned":  # within its table, and the error past it
            losses, _ = _evaluate(runs[s], batches, t)
            _, error = _evaluate(runs[s], batches, 2 * t)
        results[s] = (losses, error)
    for kind in SCALINGS:
        results[f"rope+{kind}"] = _evaluate(runs["rope"], batches, 4 * t, _scaling(kind, 4, t))
        results[f"rope+{kind}+ft"] = _evaluate(
            _finetune(a, kind, runs["rope"], a.ft_steps), batches, 4 * t
        )
    return {
        name: {
            "by_span": _summary(losses, t),
            "losses": None
            if losses is None
            else [None if np.isnan(x) else float(x) for x in losses],
            "error": error,
        }
        for name, (losses, error) in results.items()
    }


def table(results: dict, t: int) -> str:
    """A Markdown table of the mean loss over position spans."""
    head = f"| model | [0, {t}) | [{t}, {2 * t}) | [{2 * t}, {4 * t}) | note |"
    rows = [head, "|---|---|---|---|---|"]
    for name, r in results.items():
        cells = ["-" if v is None else f"{v:.3f}" for v in r["by_span"]]
        note = f"error past {t}: {r['error']}" if r["error"] else ""
        rows.append(f"| {name} | {' | '.join(cells)} | {note[:120]} |")
    return "\n".join(rows)


def plot(results: dict, t: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for name, r in results.items():
        if r["losses"] is None:
            continue
        y = np.array([np.nan if v is None else v for v in r["losses"]], dtype=float)
        window = max(1, t // 16)  # a light moving average: single positions are noisy
        smooth = np.convolve(np.nan_to_num(y, nan=np.nanmean(y)), np.ones(window) / window, "same")
        ax.plot(np.arange(len(y)), smooth, label=name, linestyle="--" if "+ft" in name else "-")
    for x in (t, 2 * t):
        ax.axvline(x, color="grey", linewidth=0.8)
    ax.set(xlabel="position in document (tokens)", ylabel="validation loss (nats/token)")
    ax.set_title(f"trained at T={t}, evaluated to 4T")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    a = _args(argv)
    os.makedirs(a.out, exist_ok=True)
    results = run(a)
    md = table(results, a.seq_len)
    print(md)
    with open(os.path.join(a.out, "context.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(a.out, "context.json"), "w") as f:
        json.dump({"seq_len": a.seq_len, "steps": a.steps, "results": results}, f)
    plot(results, a.seq_len, os.path.join(a.out, "context.png"))
    print(f"wrote {a.out}/context.md, context.json and context.png")


if __name__ == "__main__":
    main()
