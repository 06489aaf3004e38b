"""The study commands of ``llmzoo``: ``embeddings`` (Word2Vec, GloVe) and ``compare``, and the
dataset options the command line shares."""

from __future__ import annotations

import argparse

from llmzoo.config import DataConfig

EPILOG_EMBEDDINGS = """examples:
  llmzoo embeddings train                       # word2vec on Python's docs, about a minute
  llmzoo embeddings train --method glove --out runs/glove.txt
  llmzoo embeddings train --method word2vec --dataset 'my_texts/**/*.txt' --dim 50
  llmzoo embeddings neighbours list int def --vectors runs/word2vec.txt -k 8

word2vec: skip-gram with negative sampling (Mikolov et al. 2013); glove: weighted least squares
on distance-weighted co-occurrence counts (Pennington et al. 2014). Vectors are written in the
word2vec text format ("V D" header, then "word v_1 ... v_D" lines), which gensim's
KeyedVectors.load_word2vec_format(path, binary=False) also reads."""

EPILOG_COMPARE = """examples:
  llmzoo compare                                # gpt2, llama, lstm, mamba, rwkv (tiny), ~10 min
  llmzoo compare gpt2-tiny rwkv-tiny my_model.yaml --tokens 500000
  llmzoo compare --flops 2e13 data.dataset='my_texts/**/*.txt'

an entry is a model preset or a YAML file of training overrides; KEY=VALUE overrides apply to
every entry. Every entry trains on the same data, tokenizer, sequence length and batch size, for
the same tokens (--tokens) or training FLOPs (--flops; the formulas are in llmzoo/compare.py).
Writes compare.json, compare.md and compare.png (training loss against FLOPs) in --out."""


def data_arguments() -> argparse.ArgumentParser:
    """The dataset options shared by ``tokenizer train``, ``data build`` and ``embeddings train``
    (see DataConfig)."""
    d = DataConfig()
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--dataset",
        default=d.dataset,
        help=f"a TFDS name, or .txt/.jsonl files: a file, a folder or a glob ({d.dataset})",
    )
    p.add_argument("--text-key", default=d.text_key, help="feature (.jsonl key) holding the text")
    p.add_argument("--data-dir", default=d.data_dir, help=f"TFDS data directory ({d.data_dir})")
    p.add_argument(
        "--txt-documents",
        choices=("file", "paragraph"),
        default=d.txt_documents,
        help="a .txt file is one document, or each blank-line separated block is one (file)",
    )
    p.add_argument(
        "--eval-fraction",
        type=float,
        default=d.eval_fraction,
        help=f"share of local documents held out for validation ({d.eval_fraction})",
    )
    return p


def data_config(args) -> DataConfig:
    """The dataset options of :func:`data_arguments`, validated as a config."""
    return DataConfig(
        dataset=args.dataset,
        text_key=args.text_key,
        data_dir=args.data_dir,
        txt_documents=args.txt_documents,
        eval_fraction=args.eval_fraction,
    )


def _neighbour_line(vectors, words, word: str, k: int) -> str:
    from llmzoo.wordvec import neighbours

    near = neighbours(vectors, words, word, k)
    return f"{word}: " + ", ".join(f"{w} {sim:.3f}" for w, sim in near)


def _cmd_embeddings_train(args) -> int:
    import time

    import tensorflow_datasets as tfds

    from llmzoo.data import iter_texts
    from llmzoo.wordvec import method_config, save_word2vec_text, train_vectors

    tfds.disable_progress_bar()
    sizes = {"dim": args.dim, "epochs": args.epochs, "window": args.window, "seed": args.seed}
    cfg = method_config(args.method, **sizes)
    out = args.out or f"runs/{args.method}.txt"
    start = time.perf_counter()
    texts = iter_texts(data_config(args), args.split)
    vocab, vectors, losses = train_vectors(
        texts, cfg, min_count=args.min_count, max_size=args.max_words
    )
    seconds = time.perf_counter() - start
    save_word2vec_text(out, vocab.words, vectors)
    print(
        f"{args.method}: {len(vocab)} words x {cfg.dim} dimensions, {cfg.epochs} epochs in "
        f"{seconds:.1f} s; loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )
    print(f"wrote {out} (word2vec text format)")
    for word in [w for w in args.show if w in vocab.index]:
        print(_neighbour_line(vectors, vocab.words, word, args.k))
    return 0


def _cmd_embeddings_neighbours(args) -> int:
    from llmzoo.wordvec import load_word2vec_text

    words, vectors = load_word2vec_text(args.vectors)
    lines = [_neighbour_line(vectors, words, word, args.k) for word in args.words]
    print("\n".join(lines))  # all or nothing: an unknown word prints no partial table
    return 0


def add_embeddings_parser(sub, data_args: argparse.ArgumentParser) -> None:
    """``llmzoo embeddings train`` and ``llmzoo embeddings neighbours``."""
    we = sub.add_parser(
        "embeddings",
        help="classic word embeddings: Word2Vec and GloVe",
        epilog=EPILOG_EMBEDDINGS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    wes = we.add_subparsers(dest="embeddings_command", metavar="ACTION", required=True)
    wt = wes.add_parser("train", parents=[data_args], help="train word vectors on a dataset")
    wt.add_argument("--method", choices=("word2vec", "glove"), default="word2vec", help="method")
    wt.add_argument("--split", default="train", help="split to train on (train)")
    wt.add_argument("--dim", type=int, default=100, help="vector width (100)")
    wt.add_argument("--epochs", type=int, default=None, help="passes (word2vec 10, glove 50)")
    wt.add_argument(
        "--window", type=int, default=None, help="context window (word2vec 5, glove 10)"
    )
    wt.add_argument("--seed", type=int, default=0, help="seed of every random draw (0)")
    wt.add_argument("--min-count", type=int, default=5, help="drop rarer words (5)")
    wt.add_argument("--max-words", type=int, default=None, help="keep the most frequent N words")
    wt.add_argument("--out", help="word2vec text file to write (runs/METHOD.txt)")
    wt.add_argument(
        "--show", nargs="*", default=["list", "int", "def"], help="words whose neighbours to print"
    )
    wt.add_argument("-k", type=int, default=8, help="neighbours to print per word (8)")
    wt.set_defaults(fn=_cmd_embeddings_train)
    wn = wes.add_parser("neighbours", help="nearest words by cosine similarity")
    wn.add_argument("words", nargs="+", metavar="WORD", help="the query words")
    wn.add_argument(
        "--vectors", default="runs/word2vec.txt", help="a word2vec text file (runs/word2vec.txt)"
    )
    wn.add_argument("-k", type=int, default=10, help="neighbours per word (10)")
    wn.set_defaults(fn=_cmd_embeddings_neighbours)


def _cmd_compare(args) -> int:
    from llmzoo.compare import DEFAULT_SET, Budget, compare

    entries = [a for a in args.items if "=" not in a] or list(DEFAULT_SET)
    overrides = [a for a in args.items if "=" in a]
    given = {
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "tokens": args.tokens,
        "flops": args.flops,
        "decode_steps": args.decode_steps,
        "contexts": args.contexts and tuple(int(c) for c in args.contexts.split(",")),
    }
    budget = Budget(**{k: v for k, v in given.items() if v is not None})
    rows = compare(entries, budget=budget, out=args.out, overrides=overrides)
    with open(f"{args.out}/compare.md") as f:
        print(f.read().rstrip())
    print(f"wrote {args.out}/compare.json, compare.md and compare.png ({len(rows)} models)")
    return 0


def add_compare_parser(sub) -> None:
    """``llmzoo compare`` (defaults: :class:`llmzoo.compare.Budget`)."""
    c = sub.add_parser(
        "compare",
        help="train architectures on the same data and budget, and compare them",
        epilog=EPILOG_COMPARE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("items", nargs="*", metavar="ENTRY|KEY=VALUE", help="presets, YAML files")
    c.add_argument("--tokens", type=int, help="training tokens per model (204800)")
    c.add_argument("--flops", type=float, help="training FLOPs per model, instead of tokens")
    c.add_argument("--seq-len", type=int, help="T, the training length (64)")
    c.add_argument("--batch-size", type=int, help="B (16)")
    c.add_argument("--contexts", help="two decode context lengths (64,448)")
    c.add_argument("--decode-steps", type=int, help="timed decode steps per context (32)")
    c.add_argument("--out", default="runs/compare", help="output directory (runs/compare)")
    c.set_defaults(fn=_cmd_compare)
