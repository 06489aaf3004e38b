"""``llmzoo compare``: train several architectures on the same data and budget, and compare them.

Every entry of the set is trained by the one training loop on the same dataset, tokenizer,
sequence length and batch size, for the same number of tokens (``--tokens``) or the same
training FLOPs (``--flops``); then each is measured the same way. An entry is a model preset name
(``gpt2-tiny``, ``lstm-tiny`` ...) or a YAML file of training-config overrides.

Training FLOPs per token (forward and backward, ``3 x`` the forward's multiply-adds ``x 2``) are
counted by one stated formula per kind (see :data:`FLOP_FORMULAS`):

- every kind: ``6 * M``, with M the matmul weights a token passes through (see
  :func:`matmul_weights`: weights of two or more dimensions per layer, not embedding tables,
  which are gathered; plus ``V * D`` for an output head tied to the embedding);
- ``decoder``: ``+ 12 * L * T * D`` for attention scores and values (Kaplan et al., 2020);
- ``mamba``: ``+ 3 * L * E * (9 * Z + 2 * W)`` for the selective scan (Gu & Dao, 2023, section
  3.3) and the depthwise convolution;
- ``rwkv``: ``+ 3 * 10 * L * D`` for the WKV recurrence.

Outputs in ``--out``: ``compare.json`` (everything), ``compare.md`` (the table: params, FLOPs per
token, train tokens/s, final validation loss, decode tokens/s and decode state size at two context
lengths) and ``compare.png`` (training loss against training FLOPs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from llmzoo import run_dir as ckpt
from llmzoo.config import TrainConfig
from llmzoo.errors import ConfigError
from llmzoo.generate.kind_params import decode_params
from llmzoo.models import registry
from llmzoo.params import flatten
from llmzoo.presets import MODEL_PRESETS, resolve_train_config
from llmzoo.train.loop import train
from llmzoo.train.metrics import read_metrics

DEFAULT_SET = ("gpt2-tiny", "llama-tiny", "lstm-tiny", "mamba-tiny", "rwkv-tiny")


@dataclasses.dataclass(frozen=True)
class Budget:
    """What every entry trains on: ``tokens`` each, or ``flops`` each (steps then differ)."""

    seq_len: int = 64
    batch_size: int = 16
    tokens: int = 16 * 64 * 200
    flops: float | None = None
    contexts: tuple[int, int] = (64, 448)
    decode_steps: int = 32


def _attention_flops(cfg, seq_len: int) -> float:
    return 12.0 * cfg.n_layers * seq_len * cfg.d_model


def _scan_flops(cfg, seq_len: int) -> float:
    inner = cfg.expand * cfg.d_model
    return 3.0 * cfg.n_layers * inner * (9 * cfg.state_size + 2 * cfg.conv_kernel)


def _wkv_flops(cfg, seq_len: int) -> float:
    return 3.0 * 10 * cfg.n_layers * cfg.d_model


# kind -> FLOPs per token beyond 6 * matmul weights (see the module docstring)
FLOP_FORMULAS = {"decoder": _attention_flops, "mamba": _scan_flops, "rwkv": _wkv_flops}


# Leaves of two or more dimensions that no matmul reads: Mamba's state matrix and depthwise conv
# (their cost is in the kind's term).
ELEMENTWISE = ("A_log", "conv_w")


def matmul_weights(cfg) -> int:
    """M: the weights a token passes through in matmuls, from the kind's param specs.

    A weight is a leaf of two or more dimensions besides the ``layers`` axis, except biases
    (``b...``), embedding tables (``table``: gathered, not multiplied; a tied output head's ``V *
    D`` is added) and :data:`ELEMENTWISE` leaves.
    """
    total = 0
    for path, spec in flatten(registry.get(cfg.kind).param_specs(cfg)).items():
        name = path.rsplit("/", 1)[-1]
        axes = zip(spec.shape, spec.logical_axes, strict=True)
        dims = [n for n, axis in axes if axis != "layers"]
        skip = name == "table" or name.startswith("b") or name in ELEMENTWISE
        if len(dims) >= 2 and not skip:
            total += math.prod(spec.shape)
    if getattr(cfg, "tie_embeddings", False):
        total += cfg.vocab_size * cfg.d_model
    return total


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token of a model: ``6 * M`` plus its kind's term (module docstring)."""
    extra = FLOP_FORMULAS.get(cfg.kind)
    return 6.0 * matmul_weights(cfg) + (extra(cfg, seq_len) if extra else 0.0)


def _entry_args(entry: str) -> tuple[str, str | None, list[str]]:
    """``(name, YAML file or None, overrides)`` of a set entry: a model preset or a YAML file."""
    if entry.endswith((".yaml", ".yml")):
        return os.path.splitext(os.path.basename(entry))[0], entry, []
    if entry not in MODEL_PRESETS:
        raise ConfigError(
            f"compare: unknown preset {entry!r}; use a model preset "
            f"({', '.join(sorted(MODEL_PRESETS))}) or a .yaml file of training overrides"
        )
    return entry, None, [f"model.preset={entry}"]


def entry_configs(entries, budget: Budget, out: str, overrides=()) -> dict[str, TrainConfig]:
    """The training config of every entry, on the shared data and budget (steps for tokens).

    Each entry's model gets the tokenizer's vocabulary size and room for the longest decode
    context.
    """
    configs = {}
    for entry in entries:
        name, yaml_file, own = _entry_args(entry)
        shared = [
            f"run_dir={os.path.join(out, name)}",
            f"seq_len={budget.seq_len}",
            f"batch_size={budget.batch_size}",
            f"model.max_seq_len={max(budget.contexts) + budget.decode_steps + 1}",
            "objective.name=causal_lm",
        ]
        cfg = resolve_train_config(yaml_file, [*own, *shared, *overrides])
        model = dataclasses.replace(cfg.model, vocab_size=cfg.data.vocab_size)
        steps = max(1, budget.tokens // (budget.seq_len * budget.batch_size))
        configs[name] = _with_steps(dataclasses.replace(cfg, model=model), steps)
    return configs


def _with_steps(cfg: TrainConfig, steps: int) -> TrainConfig:
    warmup = min(cfg.optim.warmup_steps, max(steps // 10, 0))
    return dataclasses.replace(
        cfg,
        steps=steps,
        eval_every=steps,
        ckpt_every=steps,
        log_every=max(1, steps // 20),
        optim=dataclasses.replace(cfg.optim, warmup_steps=warmup),
    )


def decode_speed(cfg, params, context: int, steps: int) -> tuple[float, int]:
    """Batch-1 decoding at a context: ``(tokens per second, bytes of decode state)``.

    The prompt of ``context`` tokens is prefilled, then ``steps`` single-token steps are timed
    (after one untimed step that compiles), three times: the fastest counts.
    """
    kind = registry.get(cfg.kind)
    params = decode_params(params, cfg)
    tokens = jnp.asarray(np.arange(context, dtype=np.int32)[None] % cfg.vocab_size)
    cache = kind.init_cache(params, {"tokens": tokens}, cfg=cfg, max_len=context + steps + 1)
    step = jax.jit(lambda p, t, c, pos: kind.apply_cached(p, t, c, cfg=cfg, positions=pos))
    _, cache = step(params, tokens, cache, jnp.arange(context, dtype=jnp.int32)[None])
    size = sum(x.nbytes for x in jax.tree.leaves(cache))
    tok = tokens[:, -1:]
    logits, cache = step(params, tok, cache, jnp.full((1, 1), context, jnp.int32))
    jax.block_until_ready(logits)
    pos = jnp.full((1, 1), context + 1, jnp.int32)
    best = float("inf")
    for _ in range(3):  # the same position each step: the cache stays at the context length
        t0 = time.perf_counter()
        out, c = logits, cache
        for _ in range(steps):
            out, c = step(params, tok, cache, pos)
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - t0)
    return steps / best, size


def measure(name: str, cfg: TrainConfig, budget: Budget) -> dict:
    """Trains one entry (resuming if its run exists) and measures it."""
    summary = train(cfg, progress=False, log=lambda *_: None, extras=False)
    _, params, _ = ckpt.load_params(cfg.run_dir)
    fpt = flops_per_token(cfg.model, budget.seq_len)
    records = read_metrics(cfg.run_dir)
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # after compiling
    tokens_per_step = budget.seq_len * budget.batch_size
    row = {
        "name": name,
        "kind": cfg.model.kind,
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "flops_per_token": fpt,
        "train_tokens": cfg.steps * tokens_per_step,
        "train_tokens_per_s": float(np.median(speeds)) if speeds else None,
        "val_loss": summary["val_loss"],
        "curve": [(s * tokens_per_step * fpt, loss) for s, loss in losses],
    }
    for c in budget.contexts:
        rate, size = decode_speed(cfg.model, params, c, budget.decode_steps)
        row[f"decode_tokens_per_s@{c}"], row[f"decode_state_bytes@{c}"] = rate, size
    return row


def compare(entries=DEFAULT_SET, *, budget: Budget = Budget(), out="runs/compare", overrides=()):
    """Trains and measures every entry, and writes ``compare.json``, ``.md`` and ``.png``.

    Returns:
        The rows (one dict per entry), also in ``compare.json``.

    Raises:
        ConfigError: an unknown preset or bad override, before anything is trained.
    """
    _check_plotting()
    configs = entry_configs(entries, budget, out, overrides)
    if budget.flops is not None:  # the same FLOPs each: steps from each model's FLOPs per token
        configs = {name: _flops_steps(cfg, budget) for name, cfg in configs.items()}
    rows = []
    with tqdm(configs.items(), desc="compare", unit="model", dynamic_ncols=True) as bar:
        for name, cfg in bar:
            bar.set_postfix_str(f"{name}: {cfg.steps} steps")
            rows.append(measure(name, cfg, budget))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump({"budget": dataclasses.asdict(budget), "rows": rows}, f, indent=1)
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(table(rows, budget) + "\n")
    plot(rows, os.path.join(out, "compare.png"))
    return rows


def _flops_steps(cfg: TrainConfig, budget: Budget) -> TrainConfig:
    """``cfg`` with the steps that spend ``budget.flops`` at its FLOPs per token."""
    fpt = flops_per_token(cfg.model, budget.seq_len)
    steps = max(1, int(budget.flops / (fpt * budget.seq_len * budget.batch_size)))
    return _with_steps(cfg, steps)


def table(rows: list[dict], budget: Budget) -> str:
    """The Markdown table of :func:`compare`'s rows."""
    c1, c2 = budget.contexts
    head = (
        "| model | kind | params | MFLOP/token | train tok/s | val loss | "
        f"decode tok/s @{c1} | @{c2} | state KiB @{c1} | @{c2} |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        cells = [
            r["name"],
            r["kind"],
            f"{r['params'] / 1e6:.2f}M",
            f"{r['flops_per_token'] / 1e6:.2f}",
            f"{r['train_tokens_per_s']:.0f}" if r["train_tokens_per_s"] else "-",
            f"{r['val_loss']:.3f}",
            *(f"{r[f'decode_tokens_per_s@{c}']:.0f}" for c in (c1, c2)),
            *(f"{r[f'decode_state_bytes@{c}'] / 1024:.1f}" for c in (c1, c2)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            "llmzoo compare draws compare.png with matplotlib; pip install 'llmzoo[plot]'"
        ) from None


def plot(rows: list[dict], path: str) -> None:
    """Training loss against cumulative training FLOPs, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        x, y = zip(*r["curve"], strict=True) if r["curve"] else ((), ())
        ax.plot(x, y, label=f"{r['name']} (val {r['val_loss']:.2f})")
    ax.set(xscale="log", xlabel="training FLOPs", ylabel="training loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
