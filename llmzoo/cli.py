"""The ``llmzoo`` command line: train, eval, generate, embed, embeddings, tokenizer, data, convert;
lora, quantize and prune (:mod:`llmzoo.cli_runs`).

Any :class:`~llmzoo.errors.LlmzooError` is printed as one ``error: ...`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from llmzoo.cli_inspect import add_inspect_parsers
from llmzoo.cli_runs import add_run_tool_parsers
from llmzoo.cli_study import add_compare_parser, add_embeddings_parser, data_arguments, data_config
from llmzoo.errors import DataError, LlmzooError

EPILOG_TRAIN = """examples:
  llmzoo train                                  # tiny GPT on Python's docs, CPU-friendly
  llmzoo train --config configs/tiny.yaml steps=200 model.n_layers=2
  llmzoo train preset=small run_dir=runs/small data.dataset=lm1b
  llmzoo train data.dataset='my_texts/**/*.txt' run_dir=runs/mine   # your own .txt/.jsonl
  llmzoo train init_from=runs/converted run_dir=runs/finetune steps=100

overrides are key=value with dotted keys into the config (see llmzoo/config.py);
values are parsed as YAML. Training resumes from the newest checkpoint in run_dir."""

EPILOG_EMBED = """examples:
  llmzoo convert --from-hf path/to/all-MiniLM-L6-v2 --out runs/minilm
  llmzoo embed --run runs/minilm --text "A man plays a guitar." --text "Someone strums a guitar."
  llmzoo embed --run runs/minilm --file sentences.txt --out embeddings.npy
  llmzoo embed --run runs/minilm --file sentences.txt --similarity

texts get the special tokens of their checkpoint ([CLS] ... [SEP] for BERT); embeddings are
mean-pooled over the real tokens (or --pooling cls: the first token) and L2-normalised. Without
--out or --similarity, each embedding prints as a JSON line {"text": ..., "embedding": [...]}."""


def _cmd_train(args) -> int:
    from llmzoo.presets import resolve_train_config
    from llmzoo.train import distributed
    from llmzoo.train.loop import train

    cfg = resolve_train_config(args.config, args.overrides)
    if cfg.objective.name in ("ppo", "grpo"):  # their own loop of rollouts and updates
        return _train_rl(cfg, args)
    distributed.initialize_from_env()  # several processes, if the environment says so
    summary = train(cfg, stop_at=args.stop_at, progress=not args.no_progress)
    if not distributed.is_primary():
        return 0
    if summary.get("unigram_entropy") is not None:
        print(f"final validation loss: {summary['val_loss']:.4f} nats/token")
        print(
            f"unigram entropy of the validation tokens: {summary['unigram_entropy']:.4f} nats/token"
        )
    if summary.get("majority_accuracy") is not None:
        print(f"masked-token accuracy: {summary['val_accuracy']:.4f}")
        print(f"always predicting the most frequent token: {summary['majority_accuracy']:.4f}")
    if summary.get("sample") is not None:
        print(f"sample ({cfg.sample_prompt!r} ->): {summary['sample']!r}")
    from llmzoo.eval_tasks import add_task_report

    for line in add_task_report(summary):  # classification / NER: the validation task report
        print(line)
    print(f"run directory: {summary['run_dir']} (step {summary['step']})")
    return 0


def _train_rl(cfg, args) -> int:
    from llmzoo.train.rl import train_rl

    summary = train_rl(cfg, stop_at=args.stop_at, progress=not args.no_progress)
    if summary.get("reward") is not None:
        print(f"mean reward of the last rollouts: {summary['reward']:.4f} (KL to the reference "
              f"{summary['kl']:.4f} nats per completion)")  # fmt: skip
    if None not in (summary.get("val_reward"), summary.get("val_reward_start")):
        print(f"validation reward: {summary['val_reward_start']:.4f} at the start, "
              f"{summary['val_reward']:.4f} now")  # fmt: skip
    print(f"run directory: {summary['run_dir']} (step {summary['step']})")
    return 0


def _cmd_eval(args) -> int:
    from llmzoo.eval import evaluate_run
    from llmzoo.eval_tasks import format_report, is_task_run, task_report

    if is_task_run(args.run):  # classification / NER: the task report, then it as JSON
        report = task_report(args.run, split=args.split, max_batches=args.max_batches)
        print(format_report(report))
        print(json.dumps(report))
        return 0
    from llmzoo.eval_sft import evaluate_sft_run, is_sft_run
    from llmzoo.run_dir import read_config

    if read_config(args.run).objective.name in ("ppo", "grpo"):  # the policy's mean reward
        from llmzoo.train.rl import evaluate_rl_run

        print(json.dumps(evaluate_rl_run(args.run, split=args.split, max_batches=args.max_batches)))
        return 0

    if is_sft_run(args.run):  # instruction tuning: response loss and held-out exact match
        result = evaluate_sft_run(args.run, split=args.split, max_batches=args.max_batches)
        print(json.dumps(result))
        return 0
    result = evaluate_run(args.run, split=args.split, max_batches=args.max_batches)
    print(json.dumps(result))
    return 0


def _cmd_generate(args) -> int:
    from llmzoo import run_dir
    from llmzoo.errors import GenerationError
    from llmzoo.generate import generate_text
    from llmzoo.models import registry

    cfg = run_dir.read_config(args.run)
    if not registry.can_generate(cfg.model.kind):
        raise GenerationError(
            f"run {args.run!r} is a model.kind={cfg.model.kind!r} model, which cannot generate "
            "text; use `llmzoo embed` for encoders, or a decoder or seq2seq run"
        )
    cfg, params, _ = run_dir.load_params(args.run)
    if args.kv_cache is not None:  # this call's KV cache dtype, over the run's
        import dataclasses

        from llmzoo.errors import ConfigError

        if not hasattr(cfg.model, "kv_cache_dtype"):
            raise ConfigError(f"--kv-cache needs a decoder run, not kind {cfg.model.kind!r}")
        model = dataclasses.replace(cfg.model, kv_cache_dtype=args.kv_cache)
        cfg = dataclasses.replace(cfg, model=model)
    tokenizer = run_dir.read_tokenizer(args.run)
    if cfg.objective.name == "sft" and not args.raw:  # the chat template it was tuned with
        from llmzoo.eval_sft import reply

        sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        text = reply(params, cfg.model, tokenizer, args.prompt, seed=args.seed, **sampling,
                     max_new_tokens=args.max_new_tokens)  # fmt: skip
        print(text)
        return 0
    text = generate_text(
        params,
        tokenizer,
        args.prompt,
        cfg=cfg.model,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_at_eos=not args.no_stop,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        early_stopping=args.early_stopping,
    )
    print(text if cfg.model.kind == "seq2seq" else args.prompt + text)
    return 0


def _read_texts(args) -> list[str]:
    """The ``--text`` values, then the non-blank lines of ``--file``."""
    texts = list(args.text or [])
    if args.file:
        if not os.path.isfile(args.file):
            raise DataError(f"--file {args.file!r} not found; give a text file, one text a line")
        try:
            with open(args.file, encoding="utf-8") as f:
                texts += [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"--file {args.file!r} is unreadable ({e}); give UTF-8 text") from None
    if not texts:
        raise DataError("no texts to embed; pass --text TEXT (repeatable) or --file PATH")
    return texts


def _similarity_table(texts: list[str], sim) -> str:
    """The texts, numbered, then the matrix ``sim [N, N]`` with rows and columns by number."""
    labels = [f"[{i}]" for i in range(len(texts))]
    lw = len(labels[-1])
    cw = max(10, lw + 1)  # fits " -0.123456"
    lines = [f"{label:>{lw}} {text}" for label, text in zip(labels, texts, strict=True)]
    lines += ["", "cosine similarity:", " " * lw + "".join(f"{s:>{cw}}" for s in labels)]
    for label, row in zip(labels, sim, strict=True):
        lines.append(f"{label:>{lw}}" + "".join(f"{v:>{cw}.6f}" for v in row))
    return "\n".join(lines)


def _cmd_embed(args) -> int:
    import numpy as np

    from llmzoo.embed import cosine_similarity, embed_run

    texts = _read_texts(args)
    emb = embed_run(
        args.run,
        texts,
        pooling=args.pooling,
        normalize=not args.no_normalize,
        batch_size=args.batch_size,
        max_len=args.max_len,
    )
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        np.save(args.out, emb.astype(np.float32))
        path = args.out if args.out.endswith(".npy") else args.out + ".npy"
        print(f"wrote {path}: float32 [{emb.shape[0]}, {emb.shape[1]}] (texts x dimensions)")
    if args.similarity:
        print(_similarity_table(texts, cosine_similarity(emb)))
    if not args.out and not args.similarity:
        for text, row in zip(texts, emb, strict=True):
            print(json.dumps({"text": text, "embedding": [round(float(v), 6) for v in row]}))
    return 0


def _cmd_tokenizer_train(args) -> int:
    from llmzoo.data import iter_texts, train_tokenizer

    prefix = args.out[: -len(".model")] if args.out.endswith(".model") else args.out
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    texts = iter_texts(data_config(args), args.split)
    tok = train_tokenizer(texts, prefix, vocab_size=args.vocab_size, model_type=args.type)
    print(f"wrote {prefix}.model ({tok.vocab_size} tokens, {args.type})")
    return 0


def _cmd_data_build(args) -> int:
    from llmzoo.data import source_for

    data = data_config(args)
    for split in args.splits:
        src = source_for(data, split)
        print(f"{args.dataset}/{split}: {len(src)} documents in {args.data_dir}")
    return 0


def _cmd_convert(args) -> int:
    from llmzoo.hf.convert import convert_from_hf, convert_to_hf

    if args.from_hf and args.out:
        convert_from_hf(args.from_hf, args.out, force=args.force)
        print(f"converted {args.from_hf} -> {args.out}")
    elif args.run and args.to_hf:
        convert_to_hf(args.run, args.to_hf)
        print(f"converted {args.run} -> {args.to_hf}")
    else:
        raise LlmzooError("use `--from-hf DIR --out RUN_DIR` or `--run RUN_DIR --to-hf DIR`")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="llmzoo", description="llmzoo: language models as pure JAX functions."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks (also LLMZOO_DEBUG=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    data_args = data_arguments()

    t = sub.add_parser(
        "train",
        help="train or resume a model",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--config", help="YAML file overriding a preset (see configs/)")
    t.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="exit after this step, saving a checkpoint (resume by running again)",
    )
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a run's newest checkpoint on a split")
    e.add_argument("--run", required=True, help="run directory")
    e.add_argument("--split", default=None, help="split (default: the run's eval split)")
    e.add_argument("--max-batches", type=int, default=None, help="limit the batches")
    e.set_defaults(fn=_cmd_eval)

    g = sub.add_parser("generate", help="generate text from a run with a KV cache")
    g.add_argument("--run", required=True, help="run directory (trained or converted)")
    g.add_argument("--prompt", required=True, help="the prompt text")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to add (default 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--no-stop", action="store_true", help="do not stop at the EOS token")
    g.add_argument(
        "--raw",
        action="store_true",
        help="an instruction-tuned (sft) run: continue the prompt as plain text instead of "
        "answering it as the user's turn of its chat template",
    )
    g.add_argument("--num-beams", type=int, default=1, help="beam search with K beams (K > 1)")
    g.add_argument(
        "--length-penalty", type=float, default=1.0, help="beam search: score / length ** this"
    )
    g.add_argument(
        "--early-stopping",
        action="store_true",
        help="beam search: stop a row once num_beams hypotheses have finished",
    )
    g.add_argument(
        "--kv-cache", help="KV cache dtype for this call: auto or int8 (default: the run's)"
    )
    g.set_defaults(fn=_cmd_generate)

    em = sub.add_parser(
        "embed",
        help="sentence embeddings (and their cosine similarities) from an encoder run",
        epilog=EPILOG_EMBED,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    em.add_argument("--run", required=True, metavar="DIR", help="an encoder run directory")
    em.add_argument("--text", action="append", help="a text to embed (repeatable)")
    em.add_argument(
        "--file", metavar="PATH", help="a UTF-8 file of texts, one a line (blank lines skipped)"
    )
    em.add_argument(
        "--pooling",
        choices=("mean", "cls"),
        default="mean",
        help="mean over the real tokens (default) or the first token's state",
    )
    em.add_argument("--no-normalize", action="store_true", help="skip the L2 normalisation")
    em.add_argument(
        "--out", metavar="FILE.npy", help="write the [N, D] float32 embeddings with numpy.save"
    )
    em.add_argument("--similarity", action="store_true", help="print the cosine-similarity table")
    em.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (32)")
    em.add_argument(
        "--max-len", type=int, default=None, help="truncate to this many tokens (default: model's)"
    )
    em.set_defaults(fn=_cmd_embed)

    tk = sub.add_parser("tokenizer", help="tokenizer tools")
    tks = tk.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    tt = tks.add_parser(
        "train", parents=[data_args], help="train a SentencePiece tokenizer on a dataset"
    )
    tt.add_argument("--split", default="train", help="split to train on")
    tt.add_argument("--vocab-size", type=int, default=2048, help="vocabulary size")
    tt.add_argument("--type", choices=("bpe", "unigram"), default="bpe", help="model type")
    tt.add_argument("--out", required=True, help="output path (.model)")
    tt.set_defaults(fn=_cmd_tokenizer_train)

    dt = sub.add_parser("data", help="dataset tools")
    dts = dt.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    db = dts.add_parser(
        "build", parents=[data_args], help="build (or check) a dataset as TFDS array_record"
    )
    db.add_argument("--splits", nargs="+", default=["train", "validation"], help="splits")
    db.set_defaults(fn=_cmd_data_build)

    add_embeddings_parser(sub, data_args)
    add_compare_parser(sub)

    c = sub.add_parser("convert", help="convert Hugging Face safetensors <-> llmzoo runs")
    c.add_argument("--from-hf", help="a local Hugging Face checkpoint directory")
    c.add_argument("--out", help="the run directory to write")
    c.add_argument("--run", help="an llmzoo run directory")
    c.add_argument("--to-hf", help="the Hugging Face directory to write")
    c.add_argument("--force", action="store_true", help="replace a non-empty --out run directory")
    c.set_defaults(fn=_cmd_convert)

    add_run_tool_parsers(sub)
    add_inspect_parsers(sub)
    return p


def _one_line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, OSError) and e.strerror:  # permission denied, disk full ...
        where = f" ({e.filename})" if e.filename else ""
        text = f"{e.strerror}{where}; check the path, its permissions and the free space"
    return f"error: {text}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmzoo`` command.

    Expected failures print one ``error: ...`` line and exit 2; ``--debug`` (or
    ``LLMZOO_DEBUG=1``) shows the traceback instead.
    """
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("LLMZOO_DEBUG", "") not in ("", "0")
    warnings.simplefilter("default", UserWarning)
    if args.command in ("train", "eval", "data", "tokenizer"):
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()  # keep the log to our own progress bar
    try:
        return args.fn(args)
    except (LlmzooError, OSError) as e:
        if debug:
            raise
        print(_one_line(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
