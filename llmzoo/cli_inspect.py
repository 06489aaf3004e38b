"""The ``llmzoo`` commands that draw: ``plot`` (training curves from ``metrics.jsonl``) and
``inspect`` (attention maps, the logit lens and activation patching of a trained run)."""

from __future__ import annotations

import os

from llmzoo.errors import ConfigError, DataError

MAPS = ("attention", "lens", "patching")
TOP_HEADS = 3  # heads listed per score in the summary
HEADS_TITLE = "patching each head's output (all positions): fraction restored"
INDUCTION_HALF = 16  # the repeated random sequences of the induction probe: BOS, r, r

EPILOG_PLOT = """examples:
  llmzoo plot --run runs/tiny                       # writes runs/tiny/curves.png
  llmzoo plot --run runs/a --run runs/b --out ab.png --metrics loss,val_loss

needs matplotlib: pip install 'llmzoo[plot]'."""

EPILOG_INSPECT = """examples:
  llmzoo inspect --run runs/tiny --prompt "def foo(x): return foo" --out /tmp/inspect --html
  llmzoo inspect --run runs/tiny --prompt "..." --corrupt "..." --out DIR --layers 0,3

writes attention_L{l}.png (the heads of layer l), logit_lens.png, patching.png (residual stream
by layer and position) and patching_heads.png, and with --html index.html holding them all.
Patching runs the clean prompt and a corrupted one of as many tokens (by default the clean one
with one token of its last third replaced by a random one); the answer is the model's top next
token on the clean prompt, the wrong answer its top token on the corrupted one (its second
when that is the answer). Needs matplotlib: pip install 'llmzoo[plot]'."""


def _cmd_plot(args) -> int:
    from llmzoo.train.metrics import read_metrics
    from llmzoo.viz import curves, require_matplotlib

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    require_matplotlib("llmzoo plot")
    runs, have = [], set()
    for d in args.run:
        if not os.path.isdir(d):
            raise DataError(f"run directory {d!r} does not exist; check the path")
        if not os.path.exists(os.path.join(d, "metrics.jsonl")):
            raise DataError(f"run {d!r} has no metrics.jsonl; train it first, or check the path")
        records = read_metrics(d)
        runs.append((d, curves.metric_curves(records, metrics)))
        have |= {k for r in records for k, v in r.items() if isinstance(v, int | float)}
    for m in metrics:
        if not any(m in c for _, c in runs):
            keys = ", ".join(sorted(have - {"step"}))
            raise ConfigError(f"no run has metric {m!r} in metrics.jsonl; they have: {keys}")
    names = [os.path.basename(os.path.normpath(d)) for d in args.run]
    if len(set(names)) < len(names):  # two runs of one name: label them by path
        names = [os.path.normpath(d) for d in args.run]
    out = args.out or os.path.join(args.run[0], "curves.png")
    curves.training_curves([(n, c) for n, (_, c) in zip(names, runs, strict=True)], out, metrics)
    print(f"wrote {out} ({', '.join(metrics)} of {len(runs)} run{'s' * (len(runs) > 1)})")
    return 0


def _cmd_inspect(args) -> int:
    maps = [m.strip() for m in args.maps.split(",") if m.strip()]
    unknown = sorted(set(maps) - set(MAPS))
    if unknown or not maps:
        raise ConfigError(f"--maps {args.maps!r}: choose from {', '.join(MAPS)}")
    layers = None
    if args.layers:
        try:
            layers = [int(x) for x in args.layers.split(",")]
        except ValueError:
            raise ConfigError(f"--layers {args.layers!r}: give layer numbers like 0,2") from None
    summary = inspect_run(args.run, args.prompt, args.out, corrupt=args.corrupt, maps=maps,
                          layers=layers, html=args.html, seed=args.seed)  # fmt: skip
    for line in summary:
        print(line)
    return 0


def inspect_run(
    run: str,
    prompt: str,
    out: str,
    *,
    corrupt: str | None = None,
    maps=MAPS,
    layers=None,
    html: bool = False,
    seed: int = 0,
) -> list[str]:
    """Draws what a decoder run computes on ``prompt`` into the folder ``out``.

    Args:
        run: a trained decoder run directory (a causal LM).
        prompt: the clean prompt.
        out: the folder for ``attention_L{l}.png``, ``logit_lens.png``, ``patching.png``,
            ``patching_heads.png`` and, with ``html``, ``index.html``.
        corrupt: the corrupted prompt for patching (as many tokens); by default ``prompt`` with
            its first token of the last third replaced by a random token.
        maps: which of :data:`MAPS` to draw.
        layers: the layers whose attention is drawn (all by default).
        html: also write one self-contained ``index.html``.
        seed: seeds the default corruption and the induction probe.

    Returns:
        The summary lines printed by ``llmzoo inspect``.

    Raises:
        ConfigError: not a causal-LM decoder run, or attention maps of a kind without attention.
        DataError: an empty prompt, a prompt past the context, or a corrupted prompt of another
            length.
    """
    from llmzoo import run_dir
    from llmzoo.viz import html as viz_html
    from llmzoo.viz import require_matplotlib

    model_cfg = _check_kind(run, run_dir.read_config(run).model, maps)
    require_matplotlib("llmzoo inspect")  # before the work, not at the first figure
    _, params, _ = run_dir.load_params(run)
    tok = run_dir.read_tokenizer(run)
    ids = _prompt_ids(tok, prompt, model_cfg, "--prompt")
    pieces = [tok.id_to_piece(i) for i in ids]
    bad = corrupt_ids(tok, ids, corrupt, model_cfg, seed) if "patching" in maps else None
    layers = list(range(model_cfg.n_layers)) if layers is None else list(layers)
    if any(not 0 <= x < model_cfg.n_layers for x in layers):
        raise ConfigError(f"--layers {layers}: the model has layers 0..{model_cfg.n_layers - 1}")
    os.makedirs(out, exist_ok=True)
    lines = [f"{run}: {len(ids)} prompt tokens: {' '.join(map(repr, pieces))}"]
    sections = []
    if "attention" in maps:
        lines += _draw_attention(params, model_cfg, ids, tok, out, layers, seed, sections)
    if "lens" in maps:
        lines += _draw_lens(params, model_cfg, ids, pieces, tok, out, sections)
    if bad is not None:
        lines += _draw_patching(params, model_cfg, ids, bad, tok, out, sections)
    if html:
        page = viz_html.write_page(os.path.join(out, "index.html"), f"llmzoo inspect {run}",
                                   [("summary", [], "\n".join(lines)), *sections])  # fmt: skip
        lines.append(f"wrote {page}")
    names = [os.path.basename(p) for _, paths, *_ in sections for p in paths]
    lines.append(f"wrote {', '.join(names)} into {out}")
    return lines


def _check_kind(run: str, cfg, maps):
    """``cfg`` (a model config) if ``llmzoo inspect`` can draw ``maps`` of it."""
    from llmzoo.models import registry

    available = getattr(registry.get(cfg.kind), "CAPTURES", ())
    if cfg.kind != "decoder" and "attention" in maps and "attn_probs" not in available:
        can = ", ".join(available) or "nothing"
        raise ConfigError(
            f"run {run!r} is a model.kind={cfg.kind} model, which has no attention to map; it "
            f"can capture {can} (apply(..., capture=...)); llmzoo inspect draws decoder runs"
        )
    if cfg.kind != "decoder" or getattr(cfg, "head", "lm") != "lm":
        what = cfg.kind if cfg.kind != "decoder" else f"decoder with head={cfg.head!r}"
        raise ConfigError(
            f"run {run!r} is a {what} model; llmzoo inspect reads causal language models "
            "(model.kind=decoder, head=lm), whose next-token logits the lens and patching need"
        )
    return cfg


def _prompt_ids(tok, text: str, cfg, flag: str) -> list[int]:
    ids = tok.encode(text)
    if not ids:
        raise DataError(f"{flag} {text!r} has no tokens; give some text")
    if len(ids) > cfg.max_seq_len:
        raise DataError(
            f"{flag} is {len(ids)} tokens, over the model's max_seq_len={cfg.max_seq_len}; "
            "shorten it"
        )
    return ids


def corrupt_ids(tok, ids: list[int], corrupt: str | None, cfg, seed: int) -> list[int]:
    """The corrupted prompt's ids: ``corrupt``'s (as many tokens as ``ids``), or ``ids`` with its
    first token of the last third (index ``T - T // 3``) replaced by a random token drawn with
    ``seed``, neither the clean one nor a special (pad, BOS, EOS, unknown) one."""
    import numpy as np

    if corrupt is not None:
        bad = _prompt_ids(tok, corrupt, cfg, "--corrupt")
        if len(bad) != len(ids):
            raise DataError(
                f"--corrupt is {len(bad)} tokens, --prompt {len(ids)}; patching needs prompts "
                "of equal length: change a word for another of as many tokens"
            )
        return bad
    where = len(ids) - len(ids) // 3 if len(ids) > 1 else 0
    where = min(where, len(ids) - 1)
    skip = {ids[where]} | {getattr(tok, n, -1) for n in ("pad_id", "bos_id", "eos_id", "unk_id")}
    choices = [i for i in range(min(tok.vocab_size, cfg.vocab_size)) if i not in skip]
    new = int(np.random.default_rng(seed).choice(choices))
    return ids[:where] + [new] + ids[where + 1 :]


def _batch(ids: list[int]) -> dict:
    import numpy as np

    return {"tokens": np.asarray([ids], np.int32)}


def _top_heads(scores, name: str) -> str:
    """``name: L.N score, ...`` for the :data:`TOP_HEADS` best heads of ``scores [L, N]``."""
    import numpy as np

    flat = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=None)[:TOP_HEADS]
    best = [np.unravel_index(i, scores.shape) for i in flat]
    return f"top heads by {name} (layer.head score): " + ", ".join(
        f"{layer}.{head} {scores[layer, head]:.3f}" for layer, head in best
    )


def _draw_attention(params, cfg, ids, tok, out, layers, seed, sections) -> list[str]:
    import jax
    import numpy as np

    from llmzoo import viz
    from llmzoo.inspect import heads

    probs = np.asarray(heads.attention_maps(params, _batch(ids), cfg=cfg))[:, 0]  # [L, N, T, S]
    pieces, paths = [tok.id_to_piece(i) for i in ids], []
    for x in layers:
        paths.append(os.path.join(out, f"attention_L{x}.png"))
        viz.attention_grid(probs[x : x + 1], paths[-1], tokens=pieces, layers=[x],
                           title=f"layer {x} attention (row: query, column: key)")  # fmt: skip
    sections.append(("attention maps", paths))
    prev = jax.jit(heads.head_summaries)(probs[:, None])["prev_token"]  # one compile, not many
    bos = getattr(tok, "bos_id", -1)
    half = min(INDUCTION_HALF, (cfg.max_seq_len - 1) // 2)
    induction = heads.induction_scores(params, cfg=cfg, key=jax.random.PRNGKey(seed), half=half,
                                       bos=bos if bos >= 0 else None)  # fmt: skip
    return [_top_heads(np.asarray(induction), "induction score"),
            _top_heads(np.asarray(prev), "previous-token score")]  # fmt: skip


def _draw_lens(params, cfg, ids, pieces, tok, out, sections) -> list[str]:
    import numpy as np

    from llmzoo import viz
    from llmzoo.inspect import lens

    res = lens.logit_lens(params, _batch(ids), cfg=cfg)
    top = np.asarray(res["top"])[:, 0]  # [L + 1, T]
    log_probs = np.asarray(res["log_probs"])[:, 0]  # [L + 1, T, V]
    probs = np.exp(np.take_along_axis(log_probs, top[..., None], -1)[..., 0])
    words = [[tok.id_to_piece(int(i)) for i in row] for row in top]
    path = os.path.join(out, "logit_lens.png")
    viz.logit_lens_grid(probs, words, path, tokens=pieces)
    sections.append(("logit lens", [path]))
    pairs = " ".join(f"{a!r}->{b!r}" for a, b in zip(pieces, words[-1], strict=True))
    return [f"logit lens, final layer's top next token per position: {pairs}"]


def _draw_patching(params, cfg, ids, bad, tok, out, sections) -> list[str]:
    import jax
    import numpy as np

    from llmzoo import viz
    from llmzoo.inspect import patching
    from llmzoo.models import registry

    apply = jax.jit(registry.get(cfg.kind).apply, static_argnames="cfg")
    clean, corrupt = _batch(ids), _batch(bad)
    logits = [np.asarray(apply(params, b, cfg=cfg)["logits"][0, -1], np.float32)
              for b in (clean, corrupt)]  # fmt: skip
    answer = int(logits[0].argmax())
    order = np.argsort(-logits[1])  # the corrupted prompt's top token, unless it is the answer
    wrong = int(order[0] if order[0] != answer else order[1])
    pair = (clean["tokens"], corrupt["tokens"], answer, wrong)
    residual = np.asarray(patching.patch_residual(params, *pair, cfg=cfg))  # [L + 1, T]
    by_head = np.asarray(patching.patch_heads(params, *pair, cfg=cfg))  # [L, N]
    columns = [tok.id_to_piece(a) if a == b else f"{tok.id_to_piece(a)}/{tok.id_to_piece(b)}"
               for a, b in zip(ids, bad, strict=True)]  # fmt: skip
    rows = ["embed"] + [f"layer {x}" for x in range(cfg.n_layers)]
    paths = [os.path.join(out, "patching.png"), os.path.join(out, "patching_heads.png")]
    viz.patching_map(residual, paths[0], rows=rows, columns=columns)
    viz.patching_map(by_head, paths[1], rows=rows[1:], columns=[str(n) for n in
                     range(by_head.shape[1])], xlabel="head", title=HEADS_TITLE)  # fmt: skip
    sections.append(("activation patching (clean -> corrupted)", paths))
    diff = [float(x[answer] - x[wrong]) for x in logits]
    row, t = np.unravel_index(np.nanargmax(residual), residual.shape)
    return [
        f"patching: answer {tok.id_to_piece(answer)!r}, wrong {tok.id_to_piece(wrong)!r}; logit "
        f"difference {diff[0]:.3f} clean, {diff[1]:.3f} corrupted",
        f"patching: the residual after {rows[row]}, position {t} ({columns[t]!r}) restores "
        f"{residual[row, t]:.3f} of it",
        _top_heads(by_head, "restored fraction when patched"),
    ]


def add_inspect_parsers(sub) -> None:
    """Adds ``plot`` and ``inspect`` to the subcommands ``sub``."""
    import argparse

    fmt = argparse.RawDescriptionHelpFormatter
    pl = sub.add_parser("plot", help="draw training curves of one or more runs (PNG)",
                        epilog=EPILOG_PLOT, formatter_class=fmt)  # fmt: skip
    pl.add_argument("--run", action="append", required=True, help="a run directory (repeatable)")
    pl.add_argument("--out", help="the PNG to write (default: RUN/curves.png of the first run)")
    pl.add_argument("--metrics", default="loss,val_loss,lr,grad_norm",
                    help="comma-separated metrics.jsonl keys, one panel each")  # fmt: skip
    pl.set_defaults(fn=_cmd_plot)

    ins = sub.add_parser("inspect", help="attention maps, logit lens and patching of a run (PNG)",
                         epilog=EPILOG_INSPECT, formatter_class=fmt)  # fmt: skip
    ins.add_argument("--run", required=True, help="a trained decoder run directory")
    ins.add_argument("--prompt", required=True, help="the (clean) prompt to look at")
    ins.add_argument("--corrupt", help="the corrupted prompt for patching (as many tokens)")
    ins.add_argument("--out", required=True, help="the folder to write the PNGs into")
    ins.add_argument("--html", action="store_true", help="also write OUT/index.html")
    ins.add_argument("--layers", help="attention maps of these layers only, e.g. 0,3")
    ins.add_argument("--maps", default=",".join(MAPS), help="what to draw: attention,lens,patching")
    ins.add_argument("--seed", type=int, default=0, help="seed of the corruption and probes")
    ins.set_defaults(fn=_cmd_inspect)
