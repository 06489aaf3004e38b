"""Knowledge distillation against training from scratch, on an equal token budget.

The student of ``configs/distill-tiny.yaml`` trains ``--steps`` steps on the embedded corpus
(pydoc_topics) twice, from the same seed on the same batches: from scratch (``causal_lm``) and
distilled from ``--teacher`` (default ``runs/tiny``, written by ``make train``). Both runs, and
the teacher, are scored by :func:`llmzoo.eval.evaluate_run`: the plain next-token loss on the
same validation batches (a distilled run is scored as ``causal_lm``). Prints the losses, their
perplexities and the distilled-to-scratch ratios.

    .venv/bin/python benchmarks/distill.py --steps 300 --out /tmp/distill-bench
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time

from llmzoo.eval import evaluate_run
from llmzoo.presets import resolve_train_config
from llmzoo.run_dir import read_config, tokenizer_path
from llmzoo.train.loop import train

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "distill-tiny.yaml")


def _train(out: str, name: str, steps: int, overrides: list[str]) -> tuple[dict, float]:
    """Trains the student as run ``out/name`` (afresh) and scores it: ``(evaluation, seconds)``."""
    run = os.path.join(out, name)
    shutil.rmtree(run, ignore_errors=True)
    args = [f"run_dir={run}", f"steps={steps}", f"eval_every={steps}", f"ckpt_every={steps}"]
    cfg = resolve_train_config(CONFIG, [*args, *overrides])
    t0 = time.time()
    train(cfg, progress=False, log=lambda *a, **k: None, extras=False)
    return evaluate_run(run), time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--teacher", default="runs/tiny")
    ap.add_argument("--out", default="/tmp/distill-bench")
    args = ap.parse_args()
    t_data = read_config(args.teacher).data  # the student trains on the teacher's corpus
    tok = tokenizer_path(args.teacher)
    data = [f"data.data_dir={t_data.data_dir}", f"data.dataset={t_data.dataset}",
            f"data.tokenizer={tok}", "data.train_tokenizer=false"]  # fmt: skip
    scratch, t_scratch = _train(
        args.out, "scratch", args.steps, [*data, "objective.name=causal_lm", "teacher=null"]
    )
    distilled, t_distilled = _train(
        args.out, "distilled", args.steps, [*data, f"teacher={args.teacher}"]
    )
    teacher = evaluate_run(args.teacher)
    student = resolve_train_config(CONFIG, []).model
    print(f"student: {student.n_layers} layers, d_model {student.d_model}, {args.steps} steps on "
          f"the same batches each; validation: {teacher['tokens']} tokens of the "
          f"{teacher['split']} split")  # fmt: skip
    print(f"{'run':<28} {'val loss':>9} {'val ppl':>9} {'train s':>8}")
    rows = [
        (f"teacher {args.teacher} (step {teacher['step']})", teacher, None),
        ("student from scratch", scratch, t_scratch),
        ("student distilled", distilled, t_distilled),
    ]
    for name, r, secs in rows:
        secs = "-" if secs is None else f"{secs:.0f}"
        print(f"{name:<28} {r['loss']:>9.4f} {r['ppl']:>9.2f} {secs:>8}")
    print(f"distilled / scratch: loss {distilled['loss'] / scratch['loss']:.4f}, "
          f"ppl {distilled['ppl'] / scratch['ppl']:.4f}, "
          f"loss gap {distilled['loss'] - scratch['loss']:+.4f} nats/token")  # fmt: skip
    assert math.isfinite(distilled["loss"]) and math.isfinite(scratch["loss"])


if __name__ == "__main__":
    main()
