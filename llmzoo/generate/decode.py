"""Autoregressive decoding for any model kind with a cache: a jitted prefill, then a decode loop.

Only the kind's protocol is used (:mod:`llmzoo.models.registry`): ``init_cache`` (for seq2seq
models this runs the encoder over the inputs), ``apply_cached`` over the prompt, then one token at
a time. Prompts of different lengths are left-padded; padding gets position -1 and is never
attended, so every row decodes exactly as it would alone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo.config import ModelConfig
from llmzoo.errors import GenerationError
from llmzoo.generate.beam import beam_search
from llmzoo.generate.kind_params import decode_params
from llmzoo.generate.sampling import check_sampling, sample
from llmzoo.models import registry


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "max_new_tokens", "temperature", "top_k", "top_p", "stop_tokens"),
)
def _generate(
    params,
    batch,
    tokens,
    positions,
    key,
    *,
    cfg,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    stop_tokens,
):
    kind = registry.get(cfg.kind)
    params = decode_params(params, cfg)
    b, p = tokens.shape
    cache = kind.init_cache(params, batch, cfg=cfg, max_len=p + max_new_tokens)
    logits, cache = kind.apply_cached(params, tokens, cache, cfg=cfg, positions=positions)
    next_pos = positions[:, -1] + 1  # [B]
    stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)

    def pick(logits, i):
        return sample(
            logits, jax.random.fold_in(key, i), temperature=temperature, top_k=top_k, top_p=top_p
        )

    first = pick(logits[:, -1], 0)
    out = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(first)
    done = jnp.isin(first, stops)

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, cache, out, done, pos = carry
        last = out[:, i - 1]
        logits, cache = kind.apply_cached(
            params, last[:, None], cache, cfg=cfg, positions=pos[:, None]
        )
        tok = pick(logits[:, -1], i)
        out = out.at[:, i].set(jnp.where(done, stops[0] if stop_tokens else 0, tok))
        done = done | jnp.isin(tok, stops)
        return i + 1, cache, out, done, pos + 1

    n, _, out, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, out, done, next_pos))
    return out, n


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``[B, P]`` tokens and positions (-1 on padding) of left-padded rows."""
    longest = max(len(r) for r in rows)
    tokens = np.full((len(rows), longest), pad_id, np.int32)
    positions = np.full((len(rows), longest), -1, np.int32)
    for i, r in enumerate(rows):
        tokens[i, longest - len(r) :] = r
        positions[i, longest - len(r) :] = np.arange(len(r))
    return tokens, positions


def _check_token_ids(rows: list[list[int]], cfg, what: str) -> None:
    """Raises GenerationError for the first id of ``rows`` outside ``[0, cfg.vocab_size)``."""
    v = cfg.vocab_size
    bad = next((t for row in rows for t in row if not 0 <= t < v), None)
    if bad is not None:
        raise GenerationError(
            f"{what} token id {bad} is outside the vocabulary [0, {v}); encode with the "
            f"tokenizer the model was trained with, or give ids below model.vocab_size={v}"
        )


def _encoder_batch(inputs: list[list[int]], cfg, pad_id: int) -> dict:
    """Right-padded encoder inputs ``[B, S]`` with their mask."""
    if not inputs or any(len(x) == 0 for x in inputs):
        raise GenerationError("empty input; give at least one token per input")
    _check_token_ids(inputs, cfg, "input")
    longest = max(len(x) for x in inputs)
    limit = cfg.position_limit
    if limit is not None and longest > limit:
        raise GenerationError(
            f"input of {longest} tokens exceeds the model's {limit} positions; shorten it"
        )
    tokens = np.full((len(inputs), longest), pad_id, np.int32)
    mask = np.zeros((len(inputs), longest), np.int32)
    for i, x in enumerate(inputs):
        tokens[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return {"inputs": tokens, "input_mask": mask}


def generate(
    params,
    prompts: list[list[int]] | None = None,
    *,
    cfg: ModelConfig,
    inputs: list[list[int]] | None = None,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: tuple[int, ...] = (),
    seed: int = 0,
    pad_id: int = 0,
) -> list[list[int]]:
    """Generates continuations for a batch of token prompts (decoder) or inputs (seq2seq).

    Args:
        params: model params.
        prompts: B lists of token ids (lengths may differ; each non-empty). For seq2seq models
            the decoder prompts, by default ``[decoder_start_id]`` for every input.
        cfg: the model config; its kind must provide ``init_cache``/``apply_cached``.
        inputs: seq2seq models only: B lists of encoder input ids.
        max_new_tokens: the most tokens to add to each prompt.
        temperature, top_k, top_p: see :func:`llmzoo.generate.sampling.sample`; temperature 0
            is greedy.
        stop_tokens: a row ends after emitting one of these (it is kept in the output).
        seed: sampling seed.
        pad_id: token used for left padding (never attended).

    Returns:
        B lists of new token ids (without the prompt), each cut after its first stop token.

    Raises:
        GenerationError: the kind cannot generate, a prompt is empty or holds an id outside
            the vocabulary, prompt + max_new_tokens exceeds the context, or a sampler argument
            is out of range (see :func:`llmzoo.generate.sampling.check_sampling`).
    """
    if not registry.can_generate(cfg.kind):
        raise GenerationError(
            f"model.kind={cfg.kind!r} cannot generate text (it has no decoder); generate from a "
            "decoder or seq2seq run, or use `llmzoo embed` for an encoder"
        )
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens={max_new_tokens}; ask for at least 1 token")
    check_sampling(temperature, top_k, top_p)
    batch = {}
    if cfg.kind == "seq2seq" or inputs is not None:
        if inputs is None:
            raise GenerationError("a seq2seq model needs inputs to condition on; pass inputs=")
        batch = _encoder_batch(inputs, cfg, pad_id)
        prompts = prompts or [[cfg.decoder_start_id] for _ in inputs]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenerationError("empty prompt; give at least one token per prompt")
    _check_token_ids(prompts, cfg, "prompt")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > cfg.max_seq_len:
        raise GenerationError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
            f"context of {cfg.max_seq_len} tokens; shorten the prompt or lower max_new_tokens"
        )
    tokens, positions = _left_pad(prompts, pad_id)
    batch = batch or {"tokens": tokens}
    out, n = _generate(
        params,
        jax.tree.map(jnp.asarray, batch),
        jnp.asarray(tokens),
        jnp.asarray(positions),
        jax.random.key(seed),
        cfg=cfg,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        stop_tokens=tuple(int(t) for t in stop_tokens),
    )
    out = np.asarray(out)[:, : int(n)]
    results = []
    for row in out.tolist():
        for j, t in enumerate(row):
            if t in stop_tokens:
                row = row[: j + 1]
                break
        results.append(row)
    return results


def generate_text(
    params,
    tokenizer,
    prompt: str,
    *,
    cfg: ModelConfig,
    max_new_tokens: int = 64,
    stop_at_eos: bool = True,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    **kwargs,
) -> str:
    """Encodes ``prompt``, generates, and decodes the continuation (stopping at EOS).

    For a seq2seq model the prompt is the encoder input (with EOS appended) and the result is
    the decoder's output; ids past the tokenizer's vocabulary (sentinels) are dropped from the
    text. ``num_beams > 1`` decodes with :func:`llmzoo.generate.beam.beam_search`
    (``length_penalty``, ``early_stopping``); otherwise ``kwargs`` go to :func:`generate`
    (temperature, top_k, top_p, seed).

    Raises:
        GenerationError: as :func:`generate`, or ``num_beams < 1``; the sampler arguments and
            token ids are checked for beam search too.
    """
    if num_beams < 1:
        raise GenerationError(
            f"num_beams={num_beams} is below 1; use 1 for sampling or greedy decoding, or K > 1 "
            "beams for beam search"
        )
    check_sampling(**{k: v for k, v in kwargs.items() if k in ("temperature", "top_k", "top_p")})
    ids = tokenizer.encode(prompt)
    eos = getattr(tokenizer, "eos_id", -1)
    if not ids:
        ids = [tokenizer.bos_id] if getattr(tokenizer, "bos_id", -1) >= 0 else [0]
    stops = (eos,) if stop_at_eos and eos >= 0 else ()
    inputs = [ids + ([eos] if eos >= 0 else [])] if cfg.kind == "seq2seq" else None
    prompts = None if inputs else [ids]
    if num_beams > 1:
        if prompts:
            _check_token_ids(prompts, cfg, "prompt")
        batch = _encoder_batch(inputs, cfg, 0) if inputs else {"tokens": np.asarray(prompts)}
        (new,) = beam_search(
            params,
            batch,
            cfg=cfg,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            eos_id=eos if eos >= 0 else None,
        ).tolist()
        new = [t for t in new if t >= 0]
    else:
        (new,) = generate(
            params,
            prompts,
            cfg=cfg,
            inputs=inputs,
            max_new_tokens=max_new_tokens,
            stop_tokens=stops,
            **kwargs,
        )
    if eos >= 0 and eos in new and (stops or num_beams > 1):
        new = new[: new.index(eos)]
    # Ids past the tokenizer's vocabulary (T5 sentinels, a reserved mask id) have no text.
    return tokenizer.decode([t for t in new if 0 <= t < tokenizer.vocab_size])
