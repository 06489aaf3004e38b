"""Beam search over any kind with a cache (``init_cache``/``apply_cached``/``select_cache``).

Reproduces Hugging Face transformers' ``_beam_search`` (v5): each step keeps the top 2K of the
K x V continuations, the best K that did not just finish keep running, and those among the top K
that hit EOS (or the length limit) join the K finished hypotheses, scored by
``sum_logprobs / generated_length ** length_penalty`` (the generated length counts EOS, not the
prompt or the decoder start token). ``early_stopping`` is True (stop once K hypotheses are
finished), False (stop when the best running score, normalised at the current length, cannot
beat the worst finished one) or ``"never"`` (the same bound, taken at the maximum length when
``length_penalty > 0``). The whole search is one jitted ``lax.while_loop``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo.config import ModelConfig
from llmzoo.errors import GenerationError
from llmzoo.generate.kind_params import decode_params
from llmzoo.models import registry

NEG = -1.0e9  # Hugging Face's "impossible" score


def beam_search(
    params: dict,
    batch: dict,
    *,
    cfg: ModelConfig,
    num_beams: int,
    max_new_tokens: int,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> np.ndarray:
    """The best beam of each row, as Hugging Face's ``generate(num_beams=K, do_sample=False)``.

    Args:
        params: the model params.
        batch: seq2seq kinds: ``inputs [B, S]`` and optional ``input_mask [B, S]`` (decoding
            starts from ``cfg.decoder_start_id``); decoder-only kinds: the prompts ``tokens
            [B, P]``, left-padded, with optional ``positions [B, P]`` (-1 at padding).
        cfg: the model config; its kind must provide the cache protocol.
        num_beams: K.
        max_new_tokens: the most tokens generated per row (EOS included).
        length_penalty: exponent of the generated length dividing a finished hypothesis' score.
        early_stopping: True, False or ``"never"`` (see the module docstring).
        eos_id: the end-of-sequence id (default ``cfg.eos_id`` if the config has one; None: only
            the length limit ends hypotheses).
        pad_id: default ``cfg.pad_id``. Rows shorter than the longest are filled with pad_id, or
            with eos_id when pad_id is 0 or None (Hugging Face's rule), or -1 without eos_id.

    Returns:
        ``[B, T]`` int32 numpy array of generated tokens (without the prompt or the decoder start
        token), T the longest best hypothesis.

    Raises:
        GenerationError: the kind cannot generate, or a count is not positive.
    """
    if not registry.can_generate(cfg.kind):
        raise GenerationError(f"model.kind={cfg.kind!r} has no KV cache; beam search needs one")
    if num_beams < 1 or max_new_tokens < 1:
        raise GenerationError(
            f"num_beams={num_beams} and max_new_tokens={max_new_tokens} must both be >= 1"
        )
    if early_stopping not in (True, False, "never"):
        raise GenerationError(f"early_stopping={early_stopping!r}; use True, False or 'never'")
    eos_id = getattr(cfg, "eos_id", None) if eos_id is None else eos_id
    pad_id = getattr(cfg, "pad_id", None) if pad_id is None else pad_id
    fill = -1 if eos_id is None else (pad_id or eos_id)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    seqs, lengths = _search(
        params,
        batch,
        cfg=cfg,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        length_penalty=float(length_penalty),
        early_stopping=early_stopping,
        eos_id=eos_id,
        fill=fill,
    )
    return np.asarray(seqs)[:, : int(np.max(lengths))]


def _prefill(params, batch, cfg, max_new_tokens):
    """Runs the prompt (or the decoder start token) once per row.

    Returns ``(logits [B, V], cache, next positions [B])``.
    """
    module = registry.get(cfg.kind)
    start = getattr(cfg, "decoder_start_id", None)
    if start is not None:  # encoder-decoder: the prompt is the decoder start token
        b = batch["inputs"].shape[0]
        tokens, positions = jnp.full((b, 1), start, jnp.int32), jnp.zeros((b, 1), jnp.int32)
    else:
        tokens = batch["tokens"].astype(jnp.int32)
        b, p = tokens.shape
        positions = batch.get("positions")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    max_len = tokens.shape[1] + max_new_tokens
    cache = module.init_cache(params, batch, cfg=cfg, max_len=max_len)
    logits, cache = module.apply_cached(params, tokens, cache, cfg=cfg, positions=positions)
    return logits[:, -1], cache, positions[:, -1] + 1


def _gather(x, index):
    """``x [B, M, ...]`` at ``index [B, K]`` along axis 1."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _candidates(s, logits, t, k, eos_id, n):
    """Step (c)-(d) of HF: the top 2K continuations and whether each hits a stopping rule."""
    b = s["run_scores"].shape[0]
    v = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, v)
    logp = (logp + s["run_scores"][:, :, None]).reshape(b, k * v)
    top_scores, top_idx = jax.lax.top_k(logp, 2 * k)
    parent, token = top_idx // v, (top_idx % v).astype(jnp.int32)
    seqs = _gather(s["run_seqs"], parent).at[:, :, t].set(token)
    hits = jnp.broadcast_to(t + 1 >= n, token.shape)
    if eos_id is not None:
        hits = hits | (token == eos_id)
    return top_scores, parent, seqs, hits


def _length_norms(n, length_penalty):
    """``[n + 1]``: ``length ** length_penalty``, rounded from float64 as Hugging Face's scalar."""
    lengths = np.maximum(np.arange(n + 1, dtype=np.float64), 1.0)  # entry 0 is never used
    return jnp.asarray((lengths**length_penalty).astype(np.float32))


def _update_finished(s, top_scores, seqs, hits, t, k, norms, early_stopping):
    """Step (f): the new top-K finished hypotheses among the old ones and those just finished."""
    did_finish = hits & (jnp.arange(2 * k) < k)[None, :]
    scores = top_scores / norms[t + 1]
    full = jnp.all(s["finished"], axis=-1, keepdims=True) & (early_stopping is True)
    scores = scores + full.astype(jnp.float32) * NEG
    scores = scores + (~s["improvable"]).astype(jnp.float32) * NEG
    scores = scores + (~did_finish).astype(jnp.float32) * NEG
    lengths = jnp.broadcast_to(t + 1, did_finish.shape)
    merged = {
        "seqs": jnp.concatenate([s["seqs"], seqs], axis=1),
        "scores": jnp.concatenate([s["scores"], scores], axis=1),
        "finished": jnp.concatenate([s["finished"], did_finish], axis=1),
        "lengths": jnp.concatenate([s["lengths"], lengths], axis=1),
    }
    best = jax.lax.top_k(merged["scores"], k)[1]
    return {name: _gather(x, best) for name, x in merged.items()}


def _still_improvable(s, t, n, norms, length_penalty, early_stopping):
    """HF's early-stop heuristic, after step ``t``: can a running beam beat a finished one?"""
    best_len = n if (early_stopping == "never" and length_penalty > 0.0) else t + 1
    best_running = s["run_scores"][:, :1] / norms[best_len]
    worst = jnp.where(s["finished"], jnp.min(s["scores"], axis=1, keepdims=True), NEG)
    return s["improvable"] & jnp.any(best_running > worst, axis=-1, keepdims=True)


@functools.partial(
    jax.jit,
    static_argnames=(
        "cfg",
        "num_beams",
        "max_new_tokens",
        "length_penalty",
        "early_stopping",
        "eos_id",
        "fill",
    ),
)
def _search(
    params, batch, *, cfg, num_beams, max_new_tokens, length_penalty, early_stopping, eos_id, fill
):
    """The jitted search: returns ``(sequences [B, N], lengths [B])`` of each row's best beam."""
    module = registry.get(cfg.kind)
    params = decode_params(params, cfg)
    k, n = num_beams, max_new_tokens
    norms = _length_norms(n, length_penalty)
    logits, cache, next_pos = _prefill(params, batch, cfg, n)
    b = logits.shape[0]
    rows = jnp.repeat(jnp.arange(b), k)
    cache, logits, next_pos = module.select_cache(cache, rows), logits[rows], next_pos[rows]
    state = {
        "run_seqs": jnp.full((b, k, n), fill, jnp.int32),
        "run_scores": jnp.zeros((b, k), jnp.float32).at[:, 1:].set(NEG),
        "seqs": jnp.full((b, k, n), fill, jnp.int32),
        "scores": jnp.full((b, k), NEG, jnp.float32),
        "finished": jnp.zeros((b, k), bool),
        "lengths": jnp.zeros((b, k), jnp.int32),
        "improvable": jnp.ones((b, 1), bool),
    }

    def step(carry):
        t, s, logits, cache, _ = carry
        top_scores, parent, seqs, hits = _candidates(s, logits, t, k, eos_id, n)
        run_scores = top_scores + hits.astype(jnp.float32) * NEG
        keep = jax.lax.top_k(run_scores, k)[1]
        s = s | {"run_seqs": _gather(seqs, keep), "run_scores": _gather(run_scores, keep)}
        s = s | _update_finished(s, top_scores, seqs, hits, t, k, norms, early_stopping)
        improvable = _still_improvable(s, t, n, norms, length_penalty, early_stopping)
        s = s | {"improvable": improvable}
        done = ~jnp.any(s["improvable"]) | jnp.all(hits)
        if early_stopping is True:
            done = done | jnp.all(s["finished"])
        parents = (_gather(parent, keep) + jnp.arange(b)[:, None] * k).reshape(-1)
        tokens = s["run_seqs"][:, :, t].reshape(-1, 1)
        logits, cache = module.apply_cached(
            params,
            tokens,
            module.select_cache(cache, parents),
            cfg=cfg,
            positions=(next_pos + t)[:, None],
        )
        return t + 1, s, logits[:, -1], cache, done

    def cond(carry):
        t, *_, done = carry
        return (t < n) & ~done

    carry = (jnp.int32(0), state, logits, cache, jnp.bool_(False))
    _, state, *_ = jax.lax.while_loop(cond, step, carry)
    return state["seqs"][:, 0], state["lengths"][:, 0]


__all__ = ["beam_search"]
