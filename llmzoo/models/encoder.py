"""Kind ``encoder``: bidirectional post-LN transformers (BERT, RoBERTa, ALBERT, DeBERTa-v2,
Longformer).

Read top to bottom: param declarations, embeddings, one block, the stack (``lax.scan`` over
layers, or over one shared layer for ALBERT), the task heads, then ``apply``. The families differ
only in :class:`EncoderConfig` switches (defined in :mod:`llmzoo.models.encoder_config` and
re-exported here); their presets are data in :mod:`llmzoo.models.families`.

Param tree (layers stacked on a leading axis L, unless ``share_layers``)::

    embed/table [V, E]        pos_embed/table [P, E]     type_embed/table [Y, E]
    embed_norm/{scale,bias}   embed_proj/{w [E, D], b}   (factorised embeddings only)
    rel_embed/table [2R, D]   rel_norm/{scale,bias}      (DeBERTa relative attention only)
    layers/attn/{wq,wk,wv,wo,bq,bk,bv,bo}  layers/pos_proj/{wq,bq,wk,bk}  layers/attn_norm
    layers/mlp/{w_up,b_up,w_down,b_down}   layers/mlp_norm
    layers/global_attn/{wq,wk,wv,bq,bk,bv}  (Longformer's global projections only)
    pooler/{w, b}             mlm/{w [D, E], b, b_out [V]}  mlm_norm   pair_head   classifier

Dimensions: B batch, T tokens, D model width, N heads, H head width, F MLP width, V vocabulary,
E embedding width, Y token types, C labels, R relative span, P position-table rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llmzoo.errors import DataError
from llmzoo.layers import attention as attn_lib
from llmzoo.layers import attention_impl, disentangled, heads, longformer
from llmzoo.layers.heads import cls_pool, mean_pool
from llmzoo.layers.mlp import mlp, mlp_specs
from llmzoo.layers.norms import layer_norm, norm_specs
from llmzoo.layers.remat import layer_loop
from llmzoo.layers.residual import dropout
from llmzoo.models import capture as capture_lib
from llmzoo.models.encoder_config import EncoderConfig
from llmzoo.params import ParamSpec, init_params, normal, stack, with_dtype, zeros
from llmzoo.sharding import constrain, take_rows

ACT_AXES = ("batch", "seq", "embed")
NO_TAPS = capture_lib.NO_TAPS
CAPTURES = capture_lib.ENCODER
# ---------------------------------------------------------------------------------------------
# Params


def _table(rows: int, width: int, std: float, axes=(None, "embed")) -> dict:
    return {"table": ParamSpec((rows, width), logical_axes=axes, init=normal(std))}


def _block_specs(cfg: EncoderConfig) -> dict:
    d, n, h, std = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.init_std
    block = {
        "attn": attn_lib.attention_specs(d, n, n, h, qkv_bias=True, out_bias=True, std=std),
        "attn_norm": norm_specs(d),
        "mlp": mlp_specs(d, cfg.d_ff, cfg.mlp, bias=True, std=std),
        "mlp_norm": norm_specs(d),
    }
    if cfg.attention_window is not None:
        block["global_attn"] = longformer.global_specs(d, n, h, std=std)
    if cfg.relative_attention and not cfg.share_att_key:
        block["pos_proj"] = disentangled.position_projection_specs(
            d, n, h, cfg.pos_att_type, std=std
        )
    return block


def _embedding_specs(cfg: EncoderConfig) -> dict:
    d, e, std = cfg.d_model, cfg.embed_width, cfg.init_std
    specs = {"embed": _table(cfg.vocab_size, e, std, ("vocab", "embed"))}
    if cfg.position == "learned":
        specs["pos_embed"] = _table(cfg.max_seq_len + cfg.position_offset, e, std)
    if cfg.type_vocab_size:
        specs["type_embed"] = _table(cfg.type_vocab_size, e, std)
    specs["embed_norm"] = norm_specs(d if cfg.embed_norm_after_proj else e)
    if cfg.embed_dim is not None:
        specs["embed_proj"] = heads.dense_specs(
            e, d, axes=(None, "embed"), std=std, bias=cfg.embed_proj_bias
        )
    if cfg.relative_attention:
        specs["rel_embed"] = _table(2 * cfg.relative_span, d, std)
        if cfg.rel_embed_norm:
            specs["rel_norm"] = norm_specs(d)
    return specs


def _head_specs(cfg: EncoderConfig) -> dict:
    d, std = cfg.d_model, cfg.init_std
    specs = {}
    if cfg.pooler:
        specs["pooler"] = heads.dense_specs(d, d, std=std)
    if cfg.head in ("mlm", "pretraining"):
        specs["mlm"] = heads.dense_specs(d, cfg.embed_width, std=std)
        specs["mlm"]["b_out"] = ParamSpec((cfg.vocab_size,), logical_axes=("vocab",), init=zeros)
        specs["mlm_norm"] = norm_specs(cfg.embed_width)
    if cfg.head == "pretraining":
        specs["pair_head"] = heads.dense_specs(d, 2, std=std)
    if cfg.head in ("sequence_classification", "token_classification"):
        specs["classifier"] = heads.dense_specs(d, cfg.num_labels, std=std)
    return with_dtype(specs, cfg.param_dtype)


def param_specs(cfg: EncoderConfig) -> dict:
    """Declares every parameter of the model as a :class:`ParamSpec` tree."""
    block = _block_specs(cfg)
    layers = block if cfg.share_layers else stack(block, cfg.n_layers)
    return {**_embedding_specs(cfg), "layers": layers, **_head_specs(cfg)}


def init(key: jax.Array, cfg: EncoderConfig, shardings=None) -> dict:
    """Initialises params, optionally straight onto ``shardings`` (``sharding.param_shardings``)."""
    return init_params(key, param_specs(cfg), shardings)


# ---------------------------------------------------------------------------------------------
# Forward


def _ln(p, x, cfg):
    return layer_norm(p, x, eps=cfg.norm_eps)


def _embed(params, batch, positions, cfg, rng):
    """Token, position and type embeddings, norm, projection: ``tokens [B, T]`` -> ``[B, T, D]``."""
    dtype = cfg.compute_dtype
    tokens = batch["tokens"]
    x = take_rows(params["embed"]["table"].astype(dtype), tokens)
    if cfg.type_vocab_size:
        types = batch.get("token_type_ids")
        types = jnp.zeros_like(tokens) if types is None else types
        x = x + take_rows(params["type_embed"]["table"].astype(dtype), types, None)
    if cfg.position == "learned":
        rows = positions + cfg.position_offset
        x = x + take_rows(params["pos_embed"]["table"].astype(dtype), rows, None)
    if cfg.embed_dim is None:
        x = _ln(params["embed_norm"], x, cfg)
    elif cfg.embed_norm_after_proj:
        x = _ln(params["embed_norm"], heads.dense(params["embed_proj"], x), cfg)
    else:
        x = heads.dense(params["embed_proj"], _ln(params["embed_norm"], x, cfg))
    return constrain(dropout(x, cfg.dropout, rng), ACT_AXES)


def _relative(params, positions, cfg, rng):
    """The relative table ``[2R, D]`` and each pair's row ``[B, T, T]``; None without."""
    if not cfg.relative_attention:
        return None
    table = params["rel_embed"]["table"].astype(cfg.compute_dtype)
    if cfg.rel_embed_norm:
        table = _ln(params["rel_norm"], table, cfg)
    farthest = cfg.max_relative_positions or cfg.max_seq_len
    index = disentangled.relative_index(
        positions,
        positions,
        span=cfg.relative_span,
        bucket_size=cfg.position_buckets,
        max_position=farthest,
    )
    return dropout(table, cfg.dropout, rng), index


def _head_outputs(p, x, plan, rel, cfg, with_probs):
    """Bidirectional self-attention (disentangled with ``rel``) before the output projection:
    ``x [B, T, D]`` -> ``([B, T, N, H], probabilities [B, N, T, T] float32 or None)``; the
    probabilities only ``with_probs`` (Longformer's band and global rows scattered densely)."""
    if isinstance(plan, longformer.LongformerPlan):
        o = longformer.attend(p["attn"], p.get("global_attn"), x, plan)
        if not with_probs:
            return o, None
        return o, longformer.attention_probs(p["attn"], p.get("global_attn"), x, plan)
    q, k, v = attn_lib.qkv_projection(p["attn"], x)  # [B, T, N, H]
    scale = bias = None
    if cfg.pos_att_type:
        scale = disentangled.disentangled_scale(cfg.dim_per_head, cfg.pos_att_type)
    if rel is not None:
        table, index = rel
        proj = p["attn"] if cfg.share_att_key else p["pos_proj"]
        rel_q, rel_k = disentangled.project_relative(proj, table, cfg.pos_att_type)
        bias = disentangled.disentangled_bias(q, k, rel_q, rel_k, index) * scale
    o = attention_impl.attend(q, k, v, plan, bias=bias, scale=scale)
    if not with_probs:
        return o, None
    return o, attention_impl.attention_probs(q, k, plan, bias=bias, scale=scale)


def _attention(p, x, plan, rel, cfg, taps=NO_TAPS):
    """The attention sublayer, ``x: [B, T, D]``; ``taps`` captures the probabilities and
    captures or patches the heads' outputs and the sublayer's."""
    o, probs = _head_outputs(p, x, plan, rel, cfg, taps.needs("attn_probs"))
    if probs is not None:
        taps("attn_probs", probs)
    o = taps("head_out", o)
    return taps("attn_out", attn_lib.out_projection(p["attn"], o))


def _block(p, x, plan, rel, cfg, rng, taps=NO_TAPS):
    """One post-LN block: ``LN(x + attn(x))`` then ``LN(x + mlp(x))``. ``x: [B, T, D]``;
    ``taps`` (:class:`llmzoo.models.capture.Taps`) captures and patches its intermediates."""
    r1, r2 = (None, None) if rng is None else jax.random.split(rng)
    h = _attention(p, x, plan, rel, cfg, taps)
    x = _ln(p["attn_norm"], x + dropout(h, cfg.dropout, r1), cfg)
    h = dropout(taps("mlp_out", mlp(p["mlp"], x, kind=cfg.mlp)), cfg.dropout, r2)
    return taps("residual", constrain(_ln(p["mlp_norm"], x + h, cfg), ACT_AXES))


def _stack(params, x, plan, rel, cfg, rng, return_hidden, capture=(), patch=None):
    """All L blocks under ``lax.scan``; ALBERT scans L times over its one shared layer (each
    application captured as its own layer). Returns ``(x, (hidden, captured))``."""

    def body(x, layer):
        p, i, patch_i = layer
        layer_rng = None if rng is None else jax.random.fold_in(rng, i)
        at = plan.at_layer(i) if isinstance(plan, longformer.LongformerPlan) else plan
        taps = capture_lib.layer_taps(capture, patch_i)
        x = _block(p, x, at, rel, cfg, layer_rng, taps)
        return x, (x if return_hidden else None, taps.captured)

    index, patch = jnp.arange(cfg.n_layers), patch or {}
    loop = functools.partial(layer_loop, policy=cfg.remat, scan=cfg.scan_layers)
    if cfg.share_layers:
        shared = params["layers"]
        return loop(lambda x, xs: body(x, (shared, *xs)), x, (index, patch))
    return loop(body, x, (params["layers"], index, patch))


def _heads(params, x, cfg, rng) -> dict:
    """The task outputs of ``cfg.head`` (and ``pooled``) from final states ``x [B, T, D]``."""
    r1, r2 = (None, None) if rng is None else jax.random.split(rng)
    out = {}
    if cfg.pooler:
        pooled = heads.dense(params["pooler"], dropout(cls_pool(x), cfg.dropout, r1))
        out["pooled"] = pooled = heads.pooler_activation(cfg.pooler_activation)(pooled)
    if cfg.head in ("mlm", "pretraining"):
        act, table = cfg.mlm_activation, params["embed"]["table"]
        mlm = heads.mlm_logits(
            params["mlm"], params["mlm_norm"], x, table, activation=act, eps=cfg.norm_eps
        )
        out["logits"] = mlm
    if cfg.head == "pretraining":
        pair = heads.dense(params["pair_head"], dropout(pooled, cfg.dropout, r2))
        out["pair_logits"] = pair.astype(jnp.float32)
    elif cfg.head == "sequence_classification":
        logits = heads.dense(params["classifier"], dropout(pooled, cfg.dropout, r2))
        out["logits"] = logits.astype(jnp.float32)
    elif cfg.head == "token_classification":
        logits = heads.dense(params["classifier"], dropout(x, cfg.dropout, r2))
        out["logits"] = logits.astype(jnp.float32)
    return out


def _plan(positions, segment_ids, global_mask, cfg):
    """The attention plan: same segment, and never a padding key (segment 0: position -1)."""
    if cfg.attention_window is not None:
        seg = jnp.ones_like(positions) if segment_ids is None else segment_ids
        return longformer.plan(seg, global_mask, cfg.layer_windows, cfg.max_global_tokens)
    k_pos = positions if segment_ids is None else jnp.where(segment_ids != 0, positions, -1)
    rule = attn_lib.MaskRule(positions, k_pos, segment_ids, segment_ids, causal=False)
    impl = "dense" if cfg.relative_attention else cfg.attention_impl
    return attention_impl.plan_attention(
        rule, impl=impl, dtype=cfg.compute_dtype, head_dim=cfg.dim_per_head
    )


def apply(
    params: dict,
    batch: dict,
    *,
    cfg: EncoderConfig,
    rng: jax.Array | None = None,
    return_hidden: bool = False,
    capture: tuple[str, ...] = (),
    patch: dict | None = None,
) -> dict:
    """Runs the encoder and its head on a batch.

    Args:
        params: the param tree of :func:`param_specs`.
        batch: ``tokens [B, T]`` int ids; optional ``segment_ids [B, T]`` (tokens attend only
            within their segment and 0 marks padding, never attended: a right-padded batch
            passes its attention mask here, packed rows pass 1, 2, 3 ...), ``token_type_ids
            [B, T]`` (default 0) and ``positions [B, T]`` (default ``0..T-1``; the family's
            ``position_offset`` is added); with ``cfg.attention_window`` (Longformer),
            ``global_mask [B, T]`` (1: a global token, at most ``max_global_tokens`` a row).
        cfg: the model config.
        rng: PRNG key enabling dropout; None for deterministic evaluation.
        return_hidden: also return the output of every block.
        capture: names of intermediates to return (static; :data:`CAPTURES`, shapes in
            :mod:`llmzoo.models.capture`; ``attn_probs`` is dense ``[L, B, N, T, T]`` for
            DeBERTa and Longformer too); ``()`` compiles the same program as without it.
            ``residual`` row l + 1 is block l's output after its post-LN, so the last row is
            ``'hidden'``.
        patch: ``{name: (values, where)}`` activation patches (``residual``, ``attn_out``,
            ``mlp_out``, ``head_out``), as in :func:`llmzoo.models.decoder.apply`.

    Returns:
        ``'hidden' [B, T, D]`` (final states); ``'all_hidden' [L, B, T, D]`` with
        ``return_hidden``; ``'pooled' [B, D]`` with a pooler; by ``cfg.head``: ``'logits'``
        ``[B, T, V]`` (mlm, pretraining), ``[B, C]`` (sequence_classification) or ``[B, T, C]``
        (token_classification), and ``'pair_logits' [B, 2]`` (pretraining). Logits are float32.
        ``'captured'``: ``{name: [L or L + 1, ...]}`` if ``capture``.

    Raises:
        ConfigError: a ``capture`` or ``patch`` name the encoder does not have.
    """
    capture = capture_lib.check_capture("encoder", capture, patch, CAPTURES)
    tokens = batch["tokens"]
    b, t = tokens.shape
    positions = batch.get("positions")
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    rngs = [None] * 4 if rng is None else list(jax.random.split(rng, 4))
    x = _embed(params, batch, positions, cfg, rngs[0])
    x, layer_patch = capture_lib.enter(x, patch)
    x0 = x
    rel = _relative(params, positions, cfg, rngs[1])
    plan = _plan(positions, batch.get("segment_ids"), batch.get("global_mask"), cfg)
    stacked = _stack(params, x, plan, rel, cfg, rngs[2], return_hidden, capture, layer_patch)
    x, (hidden, captured) = stacked
    out = {"hidden": x, **_heads(params, x, cfg, rngs[3])}
    if return_hidden:
        out["all_hidden"] = hidden
    if capture:
        out["captured"] = capture_lib.gather(x0, captured, capture)
    return out


# ---------------------------------------------------------------------------------------------
# Host-side batch checks


def _check_ids(ids, key: str, limit: int, field: str) -> None:
    ids = np.asarray(ids)
    bad = ids[(ids < 0) | (ids >= max(limit, 1))]  # with no table (limit 0), id 0 is ignored
    if bad.size:
        raise DataError(
            f"{key} holds id {int(bad[0])} but model.{field}={limit}; ids must lie in "
            f"[0, {max(limit, 1)}): check the tokenizer and data, or raise model.{field}"
        )


def _check_global(batch: dict, cfg: EncoderConfig) -> None:
    if "global_mask" not in batch:
        return
    if cfg.attention_window is None:
        raise DataError(
            "batch['global_mask'] needs Longformer attention; set model.attention_window or drop it"
        )
    count = int(np.max(np.sum(np.asarray(batch["global_mask"]) != 0, axis=-1), initial=0))
    if count > cfg.max_global_tokens:
        raise DataError(
            f"a row of batch['global_mask'] marks {count} global tokens but "
            f"model.max_global_tokens={cfg.max_global_tokens}; raise it or mark fewer"
        )


def check_batch(batch: dict, cfg: EncoderConfig) -> None:
    """Checks a host (numpy) batch against ``cfg`` before it reaches the device, where an
    out-of-range id would silently read a clamped row. Not traceable: call it outside ``jit``.

    Raises:
        DataError: a token, token-type or position id outside its table (positions default to
            ``0..T-1``), a key whose shape differs from ``tokens``, or a ``global_mask`` without
            Longformer attention or with more than ``max_global_tokens`` in a row.
    """
    shape = np.shape(batch["tokens"])
    limits = {"tokens": (cfg.vocab_size, "vocab_size")}
    limits["token_type_ids"] = (cfg.type_vocab_size, "type_vocab_size")
    if cfg.position == "learned":
        limits["positions"] = (cfg.max_seq_len, "max_seq_len")
    for key in ("segment_ids", "token_type_ids", "positions", "global_mask"):
        if key in batch and np.shape(batch[key]) != shape:
            raise DataError(
                f"batch[{key!r}] has shape {list(np.shape(batch[key]))} but tokens has "
                f"{list(shape)}; give one id per token"
            )
    _check_global(batch, cfg)
    default_positions = np.arange(shape[-1]) if shape else np.zeros(0)
    for key, (limit, field) in limits.items():
        ids = batch.get(key, default_positions if key == "positions" else None)
        if ids is not None:
            _check_ids(ids, key, limit, field)


__all__ = ["EncoderConfig", "param_specs", "init", "apply", "mean_pool", "cls_pool", "check_batch"]
