"""Recurrent LMs (kind ``rnn``): PyTorch parity of the cells, scan vs step loop, document resets,
cached generation vs recompute, sharding, a short training run, and config errors.

Shapes are tiny (V=64, D=16, L=2) so that the whole file compiles and runs in seconds.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llmzoo import sharding
from llmzoo.errors import ConfigError
from llmzoo.generate import beam_search, generate
from llmzoo.layers import recurrent
from llmzoo.models import registry, rnn
from llmzoo.params import flatten, unflatten
from llmzoo.presets import get_model_preset, resolve_train_config

V, D, L = 64, 16, 2
B, T = 2, 10  # every full-sequence call has this shape and these keys: one compile per cell
CFGS = {  # the LSTM ties its head to the embedding, the GRU has its own
    cell: dataclasses.replace(
        get_model_preset(f"{cell}-tiny"), vocab_size=V, d_model=D, n_layers=L, tie_embeddings=tied
    )
    for cell, tied in (("lstm", True), ("gru", False))
}
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
_jit_apply = jax.jit(rnn.apply, static_argnames=("cfg",))
ARANGE = jnp.broadcast_to(jnp.arange(T), (B, T))


def _apply(params, tokens, *, cfg, positions=ARANGE, segment_ids=None):
    """Logits ``[B, T, V]`` of ``rnn.apply``; by default one document a row."""
    segment_ids = jnp.ones((B, T), jnp.int32) if segment_ids is None else segment_ids
    batch = {"tokens": jnp.asarray(tokens), "positions": positions, "segment_ids": segment_ids}
    return _jit_apply(params, batch, cfg=cfg)["logits"]


def _tokens(shape, seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 0, V)


def _random_params(cfg, seed=0):
    """Params drawn in numpy (no compiled init): U(-0.5, 0.5) cells, N(0, 1) embeddings."""
    rng = np.random.default_rng(seed)
    flat = {k: rng.uniform(-0.5, 0.5, s.shape) for k, s in flatten(rnn.param_specs(cfg)).items()}
    flat["embed/table"] = rng.standard_normal((V, D))
    return unflatten({k: jnp.asarray(x, jnp.float32) for k, x in flat.items()})


def _torch_stack(cell, seed=0):
    """A 2-layer torch LSTM/GRU (batch_first) and the same weights as llmzoo ``layers``."""
    torch.manual_seed(seed)
    net = TORCH[cell](D, D, num_layers=L, batch_first=True)
    g = recurrent.GATES[cell]

    def ours(name, k):
        w = getattr(net, f"{name}_l{k}").detach().numpy()
        if name.startswith("weight"):  # [G * H, in] -> [in, G, H]
            return w.reshape(g, D, -1).transpose(2, 0, 1)
        return w.reshape(g, D)

    names = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
    layers = {
        ours_name: jnp.asarray(np.stack([ours(theirs, k) for k in range(L)]))
        for ours_name, theirs in names.items()
    }
    return net, layers


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_model_matches_torch(cell):
    """Embedding -> torch.nn.LSTM/GRU (2 layers) -> LM head, and the final state, within 1e-5."""
    cfg = CFGS[cell]
    net, layers = _torch_stack(cell)
    table = np.random.default_rng(1).standard_normal((V, D)).astype(np.float32)
    head = table.T if cfg.tie_embeddings else np.random.default_rng(2).standard_normal((D, V))
    head = head.astype(np.float32)
    params = {"embed": {"table": jnp.asarray(table)}, "layers": layers}
    if not cfg.tie_embeddings:
        params["lm_head"] = {"w": jnp.asarray(head)}
    tokens = np.asarray(_tokens((B, T)))
    with torch.no_grad():
        out, state = net(torch.from_numpy(table[tokens]))
        want = (out @ torch.from_numpy(head)).numpy()
    np.testing.assert_allclose(_apply(params, tokens, cfg=cfg), want, atol=1e-5)

    cache = rnn.init_cache(params, {"tokens": tokens}, cfg=cfg, max_len=T)
    logits, cache = rnn.apply_cached(params, tokens, cache, cfg=cfg, positions=ARANGE)
    np.testing.assert_allclose(logits, want, atol=1e-5)
    torch_state = state if cell == "lstm" else (state,)  # (h_n, c_n) or h_n, each [L, B, H]
    for ours, theirs in zip(cache["state"], torch_state, strict=True):
        np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_scan_equals_step_loop(cell):
    """``scan_layer`` (the training form, resets included) equals a Python loop of the cell."""
    _, layers = _torch_stack(cell, seed=2)
    p = jax.tree.map(lambda w: w[0], layers)
    x = np.random.default_rng(3).standard_normal((B, 6, D), np.float32)
    reset = jnp.array([[0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 1]], bool)
    state = tuple(0.3 * s + 0.1 for s in recurrent.zero_state(cell, B, D))
    h, final = jax.jit(recurrent.scan_layer, static_argnames="cell")(
        p, x, state, cell=cell, reset=reset
    )
    step = jax.jit({"lstm": recurrent.lstm_cell, "gru": recurrent.gru_cell}[cell])
    for t in range(6):
        state = step(p, x[:, t], tuple(jnp.where(reset[:, t, None], 0.0, s) for s in state))
        np.testing.assert_allclose(h[:, t], state[0], atol=1e-5)
    for a, b in zip(final, state, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_segments_reset_the_state(cell):
    """Row 0 packs two documents; row 1 holds the second alone. Its logits are the same whether
    segment ids or positions mark the boundary, and differ without a boundary."""
    cfg = CFGS[cell]
    params = _random_params(cfg)
    junk = _tokens((B, T), seed=9)  # after the documents: causally invisible
    doc1, doc2 = _tokens((3,), seed=1), _tokens((5,), seed=2)
    tokens = jnp.stack(
        [junk[0].at[:8].set(jnp.concatenate([doc1, doc2])), junk[1].at[:5].set(doc2)]
    )
    alone = _apply(params, tokens, cfg=cfg)[1, :5]
    segments = jnp.array([[1] * 3 + [2] * 7, [1] * T])
    positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 4, 5, 6], list(range(T))])
    packed = [_apply(params, tokens, cfg=cfg, segment_ids=segments)]
    packed.append(_apply(params, tokens, cfg=cfg, positions=positions))
    for out in packed:
        np.testing.assert_allclose(out[0, 3:8], alone, atol=1e-5)
    carried = _apply(params, tokens, cfg=cfg)[0, 3:8]
    assert float(jnp.abs(carried - alone).max()) > 1e-3  # without a boundary it carries over


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_greedy_generation_equals_recompute(cell):
    """Cached greedy decoding of left-padded prompts equals argmax over full ``apply`` calls."""
    cfg = CFGS[cell]
    params = _random_params(cfg, seed=4)
    prompts, new = [[5, 9, 2, 7], [11]], 6
    out = generate(params, prompts, cfg=cfg, max_new_tokens=new)
    seqs = [list(p) for p in prompts]
    for _ in range(new):  # right-padded to T: the padding is causally invisible
        tokens = np.zeros((B, T), np.int32)
        for row, seq in zip(tokens, seqs, strict=True):
            row[: len(seq)] = seq
        logits = _apply(params, tokens, cfg=cfg)
        for i, seq in enumerate(seqs):
            seq.append(int(jnp.argmax(logits[i, len(seq) - 1])))
    assert out == [seq[len(p) :] for seq, p in zip(seqs, prompts, strict=True)]
    assert registry.can_generate("rnn")
    if cell == "gru":  # one beam is greedy decoding (exercises select_cache)
        batch = {"tokens": np.asarray([prompts[0]])}
        beam = beam_search(params, batch, cfg=cfg, num_beams=1, max_new_tokens=new)
        assert beam[0].tolist() == out[0]


def test_params_shard_under_every_strategy():
    specs = rnn.param_specs(CFGS["lstm"])
    for data, fsdp, tensor in ((8, 1, 1), (1, 8, 1), (1, 1, 8), (1, 2, 4)):
        mesh = sharding.make_mesh(data=data, fsdp=fsdp, tensor=tensor)
        shards = sharding.param_shardings(specs, mesh)
        spec = shards["layers"]["w_ih"].spec
        assert tuple(spec) == (
            None,
            "fsdp" if fsdp > 1 else None,
            None,
            "tensor" if tensor > 1 else None,
        )


def test_unknown_cell_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.cell='rnn_tanh' is unknown; use lstm or gru"):
        resolve_train_config(overrides=["model.kind=rnn", "model.cell=rnn_tanh"])
    with pytest.raises(ConfigError, match=r"model\.n_layers=0"):
        rnn.RnnConfig(n_layers=0)


def test_lstm_trains(tmp_path, tiny_run_args):
    """20 steps of causal LM on pydoc_topics lower the loss of a tiny LSTM; the run ends with
    a sample generated through the recurrent cache."""
    from llmzoo.train.loop import train

    attention_only = ("model.n_heads=", "model.d_ff=")  # keys of kind decoder, not rnn
    args = [a for a in tiny_run_args if not a.startswith(attention_only)]
    args += ["model.preset=lstm-tiny", "steps=20", "eval_every=20", "ckpt_every=20"]
    cfg = resolve_train_config(overrides=[*args, "optim.lr=1e-2", f"run_dir={tmp_path}"])
    assert cfg.model.kind == "rnn" and cfg.objective.name == "causal_lm"
    summary = train(cfg, progress=False, log=lambda *a, **k: None)
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses) == 20
    assert np.mean(losses[-3:]) < losses[0] - 0.5
    assert summary["val_loss"] < losses[0]
    assert isinstance(summary["sample"], str)
