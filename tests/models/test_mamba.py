"""Mamba (kind ``mamba``): the parallel scan against the recurrent step, document resets in the
scan and the convolution, cached generation vs recompute, sharding, a short training run, and
config errors. Parity with transformers is in ``tests/hf/test_hf_mamba.py``.

Shapes are tiny (V=64, D=16, E=32, Z=4, W=4, L=2) so that the file compiles and runs in seconds.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmzoo import sharding
from llmzoo.errors import ConfigError
from llmzoo.generate import beam_search, generate
from llmzoo.layers import ssm
from llmzoo.models import mamba, registry
from llmzoo.params import flatten, param_count, unflatten
from llmzoo.presets import get_model_preset, resolve_train_config

V, D, L = 64, 16, 2
B, T = 2, 10  # every full-sequence call has this shape: one compile
CFG = dataclasses.replace(
    get_model_preset("mamba-tiny"), vocab_size=V, d_model=D, n_layers=L, state_size=4
)
_jit_apply = jax.jit(mamba.apply, static_argnames=("cfg",))
RESET = jnp.array([[0, 0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 1, 0]], bool)  # [B, 7]


def _apply(params, tokens, *, positions=None, segment_ids=None):
    """Logits ``[B, T, V]``; by default one document a row."""
    positions = jnp.broadcast_to(jnp.arange(T), (B, T)) if positions is None else positions
    segment_ids = jnp.ones((B, T), jnp.int32) if segment_ids is None else segment_ids
    batch = {"tokens": jnp.asarray(tokens), "positions": positions, "segment_ids": segment_ids}
    return _jit_apply(params, batch, cfg=CFG)["logits"]


def _tokens(shape, seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 0, V)


def _random_params(seed=0):
    """Every leaf drawn in numpy, N(0, 0.5^2), norms around 1 (no compiled init)."""
    rng = np.random.default_rng(seed)
    flat = {
        k: 0.5 * rng.standard_normal(s.shape) for k, s in flatten(mamba.param_specs(CFG)).items()
    }
    for k in flat:
        if k.endswith("norm/scale"):
            flat[k] = flat[k] + 1.0
    return unflatten({k: jnp.asarray(x, jnp.float32) for k, x in flat.items()})


def test_parallel_scans_equal_step_loop():
    """Both parallel scans (associative; chunked with K=3 over T=7: three chunks, one padded),
    from a nonzero state with resets, equal a loop of ``ssm_step`` within 1e-5."""
    e, z, t = 8, 4, 7
    rng = np.random.default_rng(1)  # numpy: no random program to compile per shape
    log_da = -rng.uniform(0, 1.5, (B, t, e, z)).astype(np.float32)
    dbx = rng.standard_normal((B, t, e, z), np.float32)
    c = rng.standard_normal((B, t, z), np.float32)
    h0 = rng.standard_normal((B, e, z), np.float32)
    reset = RESET
    h, want = h0, []
    for i in range(t):
        y_i, h = ssm.ssm_step(log_da[:, i], dbx[:, i], c[:, i], h, reset[:, i])
        want.append(y_i)
    chunked = jax.jit(functools.partial(ssm.chunked_scan, chunk=3))
    for scan in (jax.jit(ssm.associative_scan), chunked):
        y, final = scan(log_da, dbx, c, h0, reset)
        np.testing.assert_allclose(y, jnp.stack(want, 1), atol=1e-5)
        np.testing.assert_allclose(final, h, atol=1e-5)


@pytest.mark.parametrize("scan", ssm.SCANS)
def test_mixer_equals_token_by_token(scan):
    """The mixer over T tokens (convolution window and scan, resets included) equals T calls of
    its one-token recurrent form from the carried (conv, ssm) state."""
    p = jax.tree.map(lambda w: w[0], _random_params(seed=3)["layers"]["mixer"])
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B, 7, D), np.float32)
    state = tuple(
        0.3 * rng.standard_normal(s.shape, np.float32) for s in ssm.zero_state(B, 32, 4, 4)
    )
    full, full_state = jax.jit(functools.partial(ssm.mixer, scan=scan, chunk=3))(p, x, state, RESET)
    step = jax.jit(functools.partial(ssm.mixer, scan="step"))
    for i in range(7):
        out, state = step(p, x[:, i : i + 1], state, RESET[:, i : i + 1])
        # outputs reach ~75, where float32's spacing is 8e-6: a relative term for the rounding
        np.testing.assert_allclose(full[:, i], out[:, 0], rtol=1e-6, atol=1e-5)
    for a, b in zip(full_state, state, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)


def test_packed_segments_reset_state_and_conv():
    """Row 0 packs two documents; row 1 holds the second alone. Its logits are the same whether
    segment ids or positions mark the boundary, and differ without a boundary."""
    params = _random_params()
    junk = _tokens((B, T), seed=9)  # after the documents: causally invisible
    doc1, doc2 = _tokens((3,), seed=1), _tokens((5,), seed=2)
    tokens = jnp.stack(
        [junk[0].at[:8].set(jnp.concatenate([doc1, doc2])), junk[1].at[:5].set(doc2)]
    )
    alone = _apply(params, tokens)[1, :5]
    segments = jnp.array([[1] * 3 + [2] * 7, [1] * T])
    positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 4, 5, 6], list(range(T))])
    for out in (
        _apply(params, tokens, segment_ids=segments),
        _apply(params, tokens, positions=positions),
    ):
        np.testing.assert_allclose(out[0, 3:8], alone, atol=1e-5)
    carried = _apply(params, tokens)[0, 3:8]
    assert float(jnp.abs(carried - alone).max()) > 1e-3  # without a boundary it carries over


def test_greedy_generation_equals_recompute():
    """Cached greedy decoding of left-padded prompts equals argmax over full ``apply`` calls;
    one beam (through ``select_cache``) is greedy decoding."""
    params = _random_params(seed=4)
    prompts, new = [[5, 9, 2, 7], [11]], 6
    out = generate(params, prompts, cfg=CFG, max_new_tokens=new)
    seqs = [list(p) for p in prompts]
    for _ in range(new):  # right-padded to T: the padding is causally invisible
        tokens = np.zeros((B, T), np.int32)
        for row, seq in zip(tokens, seqs, strict=True):
            row[: len(seq)] = seq
        logits = _apply(params, tokens)
        for i, seq in enumerate(seqs):
            seq.append(int(jnp.argmax(logits[i, len(seq) - 1])))
    assert out == [seq[len(p) :] for seq, p in zip(seqs, prompts, strict=True)]
    assert registry.can_generate("mamba")
    beam = beam_search(
        params, {"tokens": np.asarray([prompts[0]])}, cfg=CFG, num_beams=1, max_new_tokens=new
    )
    assert beam[0].tolist() == out[0]
    cache = mamba.init_cache(params, {"tokens": np.zeros((B, 4))}, cfg=CFG, max_len=10**6)
    assert cache["conv"].shape == (L, B, 3, 32) and cache["ssm"].shape == (L, B, 32, 4)


def test_params_shard_under_every_strategy():
    specs = mamba.param_specs(get_model_preset("mamba-tiny"))
    for data, fsdp, tensor in ((8, 1, 1), (1, 8, 1), (1, 1, 8), (1, 2, 4)):
        mesh = sharding.make_mesh(data=data, fsdp=fsdp, tensor=tensor)
        spec = sharding.param_shardings(specs, mesh)["layers"]["mixer"]["in_proj"].spec
        assert tuple(spec) == (
            None,
            "fsdp" if fsdp > 1 else None,
            None,
            "tensor" if tensor > 1 else None,
        )


def test_bad_config_values_are_config_errors():
    with pytest.raises(ConfigError, match=r"model\.dt_rank='big' is unknown; use auto or an int"):
        resolve_train_config(overrides=["model.kind=mamba", "model.dt_rank=big"])
    with pytest.raises(ConfigError, match=r"model\.state_size=0 is out of range"):
        resolve_train_config(overrides=["model.preset=mamba-tiny", "model.state_size=0"])
    with pytest.raises(ConfigError, match=r"model\.dt_rank=0"):
        mamba.MambaConfig(dt_rank=0)
    assert mamba.MambaConfig(d_model=40).time_step_rank == 3  # auto: ceil(D / 16)
    # state-spaces/mamba-130m-hf has 129,135,360 parameters (transformers' MambaForCausalLM)
    assert param_count(mamba.param_specs(get_model_preset("mamba-130m"))) == 129_135_360


def test_mamba_trains(tmp_path, tiny_run_args):
    """10 steps of causal LM on pydoc_topics lower the loss of a tiny Mamba; the run ends with
    a sample generated through the recurrent cache."""
    from llmzoo.train.loop import train

    attention_only = ("model.n_heads=", "model.d_ff=")  # keys of kind decoder, not mamba
    args = [a for a in tiny_run_args if not a.startswith(attention_only)]
    args += ["model.preset=mamba-tiny", "steps=10", "eval_every=10", "ckpt_every=10"]
    cfg = resolve_train_config(overrides=[*args, "optim.lr=1e-2", f"run_dir={tmp_path}"])
    assert cfg.model.kind == "mamba" and cfg.objective.name == "causal_lm"
    summary = train(cfg, progress=False, log=lambda *a, **k: None)
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < losses[0] - 0.5
    assert summary["val_loss"] < losses[0]
    assert isinstance(summary["sample"], str)
