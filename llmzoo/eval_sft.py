"""Exact-match evaluation of instruction tuning: greedy responses to held-out prompts.

Each held-out record's prompt (every token before its last response, rendered by the run's chat
template exactly as in training) is completed greedily with the jitted cached decoder
(:func:`llmzoo.generate.generate`) until eos; the response counts as a match when its text,
stripped of surrounding whitespace, equals the reference's.
"""

from __future__ import annotations

import functools
import math

import jax

from llmzoo import run_dir as ckpt
from llmzoo.config import ModelConfig
from llmzoo.data.records import make_record_eval_batches
from llmzoo.errors import DataError
from llmzoo.generate import generate
from llmzoo.objectives.losses import token_loss
from llmzoo.objectives.sft import SftExamples
from llmzoo.train.loop import evaluate
from llmzoo.train.step import eval_step


def exact_match(
    params,
    cfg: ModelConfig,
    examples: SftExamples,
    records: list[dict],
    *,
    batch_size: int = 128,
    max_new_tokens: int | None = None,
) -> dict:
    """Greedy responses to ``records``' prompts, compared with their references.

    Args:
        params: the model's params.
        cfg: the model config (a kind that can generate).
        examples: the SFT examples object (its tokenizer and chat template).
        records: held-out records.
        batch_size: prompts decoded together.
        max_new_tokens: the most tokens per response; default the longest reference's tokens
            plus 4.

    Returns:
        ``{'exact_match': fraction, 'count': N, 'samples': first 3 (prompt, reference, response)}``.
    """
    tok = examples.tokenizer
    pairs = [examples.prompt_and_reference(r) for r in records]
    if not pairs:
        raise DataError("no records to evaluate; check the split")
    if max_new_tokens is None:
        max_new_tokens = max(len(tok.encode(ref)) for _, ref in pairs) + 4
    stops = (tok.eos_id,) if tok.eos_id >= 0 else ()
    responses: list[str] = []
    for lo in range(0, len(pairs), batch_size):
        prompts = [p for p, _ in pairs[lo : lo + batch_size]]
        outs = generate(params, prompts, cfg=cfg, max_new_tokens=max_new_tokens, stop_tokens=stops)
        responses += [tok.decode([t for t in out if t not in stops]) for out in outs]
    hits = [r.strip() == ref.strip() for r, (_, ref) in zip(responses, pairs, strict=True)]
    samples = [
        (tok.decode(p), ref, r) for (p, ref), r in zip(pairs[:3], responses[:3], strict=True)
    ]
    return {"exact_match": sum(hits) / len(hits), "count": len(hits), "samples": samples}


def reply(
    params, cfg: ModelConfig, tokenizer, message: str, *, max_new_tokens: int, **sampling
) -> str:
    """The response of an instruction-tuned model to one user ``message``, prompted with the
    chat template it was trained with (:func:`llmzoo.objectives.sft.template_for`) and cut at
    eos.

    Args:
        params, cfg: the model.
        tokenizer: the run's tokenizer (its folder may hold the run's Jinja template).
        message: the user's turn.
        max_new_tokens: the most tokens of the response.
        **sampling: ``temperature``, ``top_k``, ``top_p``, ``seed`` of
            :func:`llmzoo.generate.generate` (default greedy).

    Returns:
        The response text.
    """
    examples = SftExamples(cfg.max_seq_len, tokenizer)
    turns = [{"role": "user", "content": message}, {"role": "assistant", "content": "."}]
    prompt, _ = examples.prompt_and_reference({"messages": turns})
    stops = (tokenizer.eos_id,) if tokenizer.eos_id >= 0 else ()
    (out,) = generate(
        params, [prompt], cfg=cfg, max_new_tokens=max_new_tokens, stop_tokens=stops, **sampling
    )
    return tokenizer.decode([t for t in out if t not in stops])


def is_sft_run(run_dir: str) -> bool:
    """Whether ``run_dir`` was trained with the ``sft`` objective."""
    return ckpt.read_config(run_dir).objective.name == "sft"


def evaluate_sft_run(
    run_dir: str, *, split: str | None = None, max_batches: int | None = None
) -> dict:
    """Validation loss (on the response tokens, as in training) and :func:`exact_match` of an
    ``sft`` run's newest checkpoint on a split (default the run's eval split). With
    ``max_batches``, the loss reads at most that many batches and the exact match the
    ``max_batches * batch_size`` first records.

    Returns:
        ``{'step', 'split', 'objective', 'loss', 'ppl', 'tokens', 'accuracy', 'exact_match',
        'count'}``: ``accuracy`` of the next response token, ``count`` records matched.
    """
    cfg, params, step = ckpt.load_params(run_dir)
    examples = SftExamples(cfg.seq_len, ckpt.read_tokenizer(run_dir))
    split = split or cfg.data.eval_split
    records = list(examples.load(cfg.data, split))
    batches = make_record_eval_batches(
        records, examples, batch_size=cfg.batch_size, max_batches=max_batches
    )
    fn = jax.jit(functools.partial(eval_step, objective=token_loss, cfg=cfg.model))
    loss = evaluate(fn, params, batches, put=lambda b: b)
    if max_batches is not None:
        records = records[: max_batches * cfg.batch_size]
    result = exact_match(params, cfg.model, examples, records)
    return {
        "step": step,
        "split": split,
        "objective": "sft",
        "loss": loss["loss"],
        "ppl": math.exp(min(loss["loss"], 50)),
        "tokens": int(loss["count"]),
        "accuracy": loss["accuracy"],
        "exact_match": result["exact_match"],
        "count": result["count"],
    }
