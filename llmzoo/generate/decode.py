"""Autoregressive decoding: a jitted prefill over the prompt, then a jitted decode loop.

Prompts of different lengths are left-padded; padding gets position -1 and is never attended, so
every row decodes exactly as it would alone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo.config import ModelConfig
from llmzoo.errors import GenerationError
from llmzoo.generate.sampling import sample
from llmzoo.models import decoder


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "max_new_tokens", "temperature", "top_k", "top_p", "stop_tokens"),
)
def _generate(
    params, tokens, positions, key, *, cfg, max_new_tokens, temperature, top_k, top_p, stop_tokens
):
    b, p = tokens.shape
    cache = decoder.init_cache(cfg, b, p + max_new_tokens)
    logits, cache = decoder.apply_cached(params, tokens, cache, cfg=cfg, positions=positions)
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
        logits, cache = decoder.apply_cached(
            params, last[:, None], cache, cfg=cfg, positions=pos[:, None]
        )
        tok = pick(logits[:, -1], i)
        out = out.at[:, i].set(jnp.where(done, stops[0] if stop_tokens else 0, tok))
        done = done | jnp.isin(tok, stops)
        return i + 1, cache, out, done, pos + 1

    n, _, out, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, out, done, next_pos))
    return out, n


def generate(
    params,
    prompts: list[list[int]],
    *,
    cfg: ModelConfig,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: tuple[int, ...] = (),
    seed: int = 0,
    pad_id: int = 0,
) -> list[list[int]]:
    """Generates continuations for a batch of token prompts.

    Args:
        params: model params.
        prompts: B lists of token ids (lengths may differ; each non-empty).
        cfg: the model config.
        max_new_tokens: the most tokens to add to each prompt.
        temperature, top_k, top_p: see :func:`llmzoo.generate.sampling.sample`; temperature 0
            is greedy.
        stop_tokens: a row ends after emitting one of these (it is kept in the output).
        seed: sampling seed.
        pad_id: token used for left padding (never attended).

    Returns:
        B lists of new token ids (without the prompt), each cut after its first stop token.

    Raises:
        GenerationError: a prompt is empty or prompt + max_new_tokens exceeds the context.
    """
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens={max_new_tokens}; ask for at least 1 token")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenerationError("empty prompt; give at least one token per prompt")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > cfg.max_seq_len:
        raise GenerationError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
            f"context of {cfg.max_seq_len} tokens; shorten the prompt or lower max_new_tokens"
        )
    b = len(prompts)
    tokens = np.full((b, longest), pad_id, np.int32)
    positions = np.full((b, longest), -1, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p) :] = p
        positions[i, longest - len(p) :] = np.arange(len(p))
    out, n = _generate(
        params,
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
    **kwargs,
) -> str:
    """Encodes ``prompt``, generates, and decodes the continuation (stopping at EOS)."""
    ids = tokenizer.encode(prompt)
    if not ids:
        ids = [tokenizer.bos_id] if getattr(tokenizer, "bos_id", -1) >= 0 else [0]
    stops = (tokenizer.eos_id,) if stop_at_eos and getattr(tokenizer, "eos_id", -1) >= 0 else ()
    (new,) = generate(
        params, [ids], cfg=cfg, max_new_tokens=max_new_tokens, stop_tokens=stops, **kwargs
    )
    if stops and new and new[-1] in stops:
        new = new[:-1]
    return tokenizer.decode(new)
