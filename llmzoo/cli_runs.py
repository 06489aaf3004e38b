"""The ``llmzoo`` commands that write one run from another: ``lora merge|export``, ``quantize``
and ``prune``."""

from __future__ import annotations

from llmzoo.errors import LlmzooError


def _cmd_lora(args) -> int:
    from llmzoo import lora_run

    if args.lora_command == "merge":
        lora_run.merge_run(args.run, args.out, force=args.force)
    else:
        lora_run.export_peft(args.run, args.out, args.base_model)
    print(f"wrote {args.out} from {args.run} ({args.lora_command})")
    return 0


def _cmd_quantize(args) -> int:
    from llmzoo import compress_run

    compress_run.quantize_run(
        args.run, args.out, method=args.method, group_size=args.group_size, force=args.force,
        kv_cache_dtype=args.kv_cache, calibration=args.calibrate,
        calibration_batches=args.calibration_batches,
    )  # fmt: skip
    size = compress_run.quant_bytes(args.out)
    (t0, t1), (p0, p1) = size["targets"], size["params"]
    print(f"wrote {args.out} ({args.method}): quantized matrices {t0:,} -> {t1:,} bytes "
          f"({t1 / t0:.3f}x), all params {p0:,} -> {p1:,} bytes ({p1 / p0:.3f}x)")  # fmt: skip
    return 0


def _cmd_prune(args) -> int:
    from llmzoo import compress_run

    if (args.sparsity is None) == (args.nm is None):
        raise LlmzooError("give one of --sparsity S (e.g. 0.5) and --nm N:M (e.g. 2:4)")
    if args.nm is not None and args.scope is not None:
        raise LlmzooError("--scope applies to --sparsity; --nm N:M prunes every group alike")
    scope = args.scope or "global"
    compress_run.prune_run(args.run, args.out, sparsity=args.sparsity, nm=args.nm,
                           scope=scope, force=args.force)  # fmt: skip
    what = f"{args.nm} structured" if args.nm else f"{args.sparsity:g} {scope}"
    print(f"wrote {args.out} ({what}): {compress_run.measured_sparsity(args.out):.4f} of the "
          "pruned matrices' weights are zero")  # fmt: skip
    return 0


def add_run_tool_parsers(sub) -> None:
    """Adds ``lora``, ``quantize`` and ``prune`` to the subcommands ``sub``."""
    lo = sub.add_parser("lora", help="LoRA runs: merge the adapters, or export them for PEFT")
    los = lo.add_subparsers(dest="lora_command", metavar="ACTION", required=True)
    for action, what in (("merge", "a plain run directory"), ("export", "a PEFT adapter dir")):
        a = los.add_parser(action, help=f"write a LoRA run's adapters as {what}")
        a.add_argument("--run", required=True, help="a LoRA run directory")
        a.add_argument("--out", required=True, help=f"{what} to write")
        a.add_argument("--force", action="store_true", help="replace a non-empty --out run")
        a.add_argument("--base-model", default="", help="export: the base's Hugging Face path")
        a.set_defaults(fn=_cmd_lora)

    qu = sub.add_parser("quantize", help="write a run with weight-only int8 / int4 matrices")
    qu.add_argument("--run", required=True, help="a trained or converted run directory")
    qu.add_argument("--method", required=True, help="int8 (per channel) or int4 (per group)")
    qu.add_argument("--group-size", type=int, default=32, help="int4: rows per scale (32)")
    qu.add_argument("--out", required=True, help="the quantized run directory to write")
    qu.add_argument("--force", action="store_true", help="replace a non-empty --out run")
    qu.add_argument("--kv-cache", help="also store generation's KV cache as int8 (or auto)")
    qu.add_argument("--calibrate", default="none", help="none (round to nearest) or gptq")
    qu.add_argument("--calibration-batches", type=int, default=8, help="gptq: train batches (8)")
    qu.set_defaults(fn=_cmd_quantize)

    pr = sub.add_parser("prune", help="write a run with magnitude-pruned (or N:M) matrices")
    pr.add_argument("--run", required=True, help="a trained or converted run directory")
    pr.add_argument("--sparsity", type=float, help="the fraction of weights set to zero")
    pr.add_argument("--scope", help="--sparsity: global (default) or layer thresholds")
    pr.add_argument("--nm", metavar="N:M", help="structured: keep N of every M inputs (2:4)")
    pr.add_argument("--out", required=True, help="the pruned run directory to write")
    pr.add_argument("--force", action="store_true", help="replace a non-empty --out run")
    pr.set_defaults(fn=_cmd_prune)
