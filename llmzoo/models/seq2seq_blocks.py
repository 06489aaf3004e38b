"""The blocks of kind ``seq2seq`` (:mod:`llmzoo.models.seq2seq`): the residual sub-layer (pre-norm
as T5, post-norm as BART), self- and cross-attention, and the encoder and decoder blocks.

Each block takes a :class:`llmzoo.models.capture.Taps` that captures its attention
probabilities, heads' and sub-layers' outputs and output (``residual``), and patches them.
Dimension letters: B batch, T target tokens, S source tokens, D model width, N heads.
"""

from __future__ import annotations

import jax

from llmzoo.layers import attention as attn_lib
from llmzoo.layers import attention_impl
from llmzoo.layers.cross_attention import cross_attention, project_heads
from llmzoo.layers.mlp import mlp
from llmzoo.layers.norms import apply_norm
from llmzoo.layers.residual import residual
from llmzoo.models import capture as capture_lib
from llmzoo.models.seq2seq_config import Seq2SeqConfig
from llmzoo.sharding import constrain

ACT_AXES = ("batch", "seq", "embed")
NO_TAPS = capture_lib.NO_TAPS


def norm(params: dict, x: jax.Array, cfg: Seq2SeqConfig) -> jax.Array:
    """``cfg``'s norm (RMSNorm or LayerNorm) of ``x [..., D]``."""
    return apply_norm(params, x, kind=cfg.norm, eps=cfg.norm_eps)


def _split(rng, n):
    return (None,) * n if rng is None else tuple(jax.random.split(rng, n))


def _sublayer(norm_params, x, fn, cfg, rng):
    """``residual`` with this config's norm, norm position and dropout; ``x: [B, T, D]``."""
    normalise = lambda h: norm(norm_params, h, cfg)  # noqa: E731
    post = cfg.norm_position == "post"
    return residual(x, fn, normalise, post_norm=post, rate=cfg.dropout, rng=rng)


def _self_attention(p, x, plan, bias, cfg, kv=None, taps=NO_TAPS):
    """Self-attention, ``x [B, T, D]``; ``kv`` = (cache k, cache v, index) while decoding;
    ``taps`` captures ``attn_probs`` and captures or patches ``head_out`` and ``attn_out``."""
    q, k, v = attn_lib.qkv_projection(p, x)
    if kv is not None:
        cache_k, cache_v, index = kv
        k, v = attn_lib.update_kv_cache(cache_k, cache_v, k, v, index)
    o = attention_impl.attend(q, k, v, plan, bias=bias, scale=cfg.attn_scale)
    if taps.needs("attn_probs"):
        probs = attention_impl.attention_probs(q, k, plan, bias=bias, scale=cfg.attn_scale)
        taps("attn_probs", probs)
    o = taps("head_out", o)
    return taps("attn_out", attn_lib.out_projection(p, o)), (k, v)


def _cross_attention(p, x, kv, plan, cfg, taps):
    """Cross-attention of ``x [B, T, D]`` over the source's ``kv``; ``taps`` captures
    ``cross_attn_probs [B, N, T, S]``. Returns ``(out [B, T, D], None)``."""
    if not taps.needs("cross_attn_probs"):
        return cross_attention(p, x, kv, plan, scale=cfg.attn_scale), None
    q = project_heads(p, x, "wq", "bq")
    taps("cross_attn_probs", attention_impl.attention_probs(q, kv[0], plan, scale=cfg.attn_scale))
    o = attention_impl.attend(q, *kv, plan, scale=cfg.attn_scale)
    return attn_lib.out_projection(p, o), None


def _mlp_sublayer(p, x, cfg, rng, taps):
    """The MLP sub-layer, then the block's output (tapped as ``residual``)."""
    mlp_fn = lambda h: (taps("mlp_out", mlp(p["mlp"], h, kind=cfg.mlp)), None)  # noqa: E731
    x, _ = _sublayer(p["mlp_norm"], x, mlp_fn, cfg, rng)
    return taps("residual", constrain(x, ACT_AXES))


def encoder_block(p, x, plan, bias, cfg, rng, taps=NO_TAPS):
    """Self-attention and MLP over the source. ``x: [B, S, D]``."""
    r1, r2 = _split(rng, 2)
    attn = lambda h: _self_attention(p["attn"], h, plan, bias, cfg, taps=taps)  # noqa: E731
    x, _ = _sublayer(p["attn_norm"], x, attn, cfg, r1)
    return _mlp_sublayer(p, x, cfg, r2, taps)


def decoder_block(p, x, ctx, cfg, rng, kv=None, taps=NO_TAPS):
    """Causal self-attention, cross-attention and MLP. ``x: [B, T, D]``.

    ``ctx`` = (self plan, self bias, (cross k, cross v), cross plan); returns ``(x, (k, v))``.
    """
    self_plan, self_bias, cross, cross_plan = ctx
    r1, r2, r3 = _split(rng, 3)
    attn = lambda h: _self_attention(  # noqa: E731
        p["attn"], h, self_plan, self_bias, cfg, kv, taps
    )
    x, new_kv = _sublayer(p["attn_norm"], x, attn, cfg, r1)
    xattn = lambda h: _cross_attention(p["cross_attn"], h, cross, cross_plan, cfg, taps)  # noqa: E731
    x, _ = _sublayer(p["cross_norm"], x, xattn, cfg, r2)
    return _mlp_sublayer(p, x, cfg, r3, taps), new_kv


__all__ = ["norm", "encoder_block", "decoder_block", "NO_TAPS"]
