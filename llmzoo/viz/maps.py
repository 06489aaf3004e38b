"""Heat maps of what a model computes: attention per layer and head, the logit lens, and
activation patching."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmzoo.errors import ConfigError
from llmzoo.viz.figure import grid_figsize, require_matplotlib, save

MAX_LABELS = 24  # token labels are drawn on maps of at most this many positions
LABEL_CHARS = 10
ATTENTION_PANEL = (2.4, 2.4)  # inches per head
LENS_CELL = (0.9, 0.4)  # inches per (layer, position) cell of the logit lens
PATCH_CELL = (0.6, 0.4)  # inches per cell of a patching map


def token_label(piece: str) -> str:
    """A token as an axis label: newlines and tabs shown escaped, ``$`` kept out of mathtext,
    at most :data:`LABEL_CHARS` characters."""
    text = piece.replace("\n", "\\n").replace("\t", "\\t")[:LABEL_CHARS]
    return text.replace("$", r"\$")


def _labels(tokens: Sequence[str] | None, n: int) -> list[str] | None:
    if tokens is None or n > MAX_LABELS:
        return None
    if len(tokens) != n:
        raise ConfigError(f"{len(tokens)} token labels for {n} positions; give one per position")
    return [token_label(t) for t in tokens]


def attention_grid(
    probs: np.ndarray,
    path: str,
    *,
    tokens: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    title: str = "attention probabilities (row: query, column: key)",
):
    """Draws attention maps as a grid of layers (rows) by heads (columns).

    Args:
        probs: ``[L, N, T, S]`` attention probabilities (one example).
        path: the PNG to write, ``grid_figsize(L, N, ATTENTION_PANEL)`` inches.
        tokens: ``S`` token strings; drawn as query and key labels when ``S <= MAX_LABELS``
            (the queries are the last ``T`` of them).
        layers: the layer number of each row (``range(L)`` by default).
        title: the figure's title.

    Returns:
        The (closed) figure; ``fig.axes[l * N + n].images[0]`` shows ``probs[l, n]``.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 4:
        raise ConfigError(f"attention maps are [L, N, T, S]; got shape {probs.shape}")
    n_layers, n_heads, t, s = probs.shape
    layers = list(range(n_layers)) if layers is None else list(layers)
    keys = _labels(tokens, s)
    plt = require_matplotlib("attention maps")
    fig, axes = plt.subplots(n_layers, n_heads, squeeze=False, layout="constrained",
                             figsize=grid_figsize(n_layers, n_heads, ATTENTION_PANEL))  # fmt: skip
    for (li, hi), ax in np.ndenumerate(axes):
        im = ax.imshow(probs[li, hi], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(f"layer {layers[li]} head {hi}", fontsize=8)
        if keys is None:
            ax.set(xticks=[], yticks=[])
            continue
        ax.set_xticks(range(s), keys if li == n_layers - 1 else [], rotation=90, fontsize=6)
        ax.set_yticks(range(t), keys[s - t :] if hi == 0 else [], fontsize=6)
    fig.colorbar(im, ax=axes, shrink=0.8, label="probability")
    fig.suptitle(title, fontsize=10)
    save(fig, path)
    return fig


def _row_names(n: int, names: Sequence[str] | None) -> list[str]:
    """``embed, layer 0, ..., layer n-2`` unless given: residual-stream rows."""
    return list(names) if names is not None else ["embed"] + [f"layer {i}" for i in range(n - 1)]


def logit_lens_grid(
    probs: np.ndarray,
    top_tokens: Sequence[Sequence[str]],
    path: str,
    *,
    tokens: Sequence[str] | None = None,
    rows: Sequence[str] | None = None,
    title: str = "logit lens: top next token after each layer (color: its probability)",
):
    """Draws the logit lens: each cell is the top next-token prediction read from the residual
    stream after a layer (rows, embedding at the bottom) at a position (columns).

    Args:
        probs: ``[R, T]`` the probability of each cell's top token (R = L + 1 rows).
        top_tokens: ``R`` lists of ``T`` token strings, the text of each cell.
        path: the PNG to write, ``grid_figsize(R, T, LENS_CELL)`` inches.
        tokens: ``T`` input tokens, the column labels.
        rows: ``R`` row names (``embed, layer 0, ...`` by default).
        title: the figure's title.

    Returns:
        The (closed) figure; ``fig.axes[0].images[0]`` holds ``probs`` and ``fig.axes[0].texts``
        the cell texts, row by row.
    """
    probs = np.asarray(probs, dtype=np.float32)
    n_rows, t = probs.shape
    if len(top_tokens) != n_rows or any(len(r) != t for r in top_tokens):
        raise ConfigError(f"top_tokens must be {n_rows} rows of {t} strings, like probs")
    plt = require_matplotlib("the logit lens plot")
    fig, ax = plt.subplots(figsize=grid_figsize(n_rows, t, LENS_CELL), layout="constrained")
    im = ax.imshow(probs, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
    for (r, c), p in np.ndenumerate(probs):
        ax.text(c, r, token_label(top_tokens[r][c]), ha="center", va="center", fontsize=7,
                color="white" if p < 0.5 else "black")  # fmt: skip
    ax.set_yticks(range(n_rows), _row_names(n_rows, rows), fontsize=7)
    labels = [token_label(x) for x in tokens] if tokens is not None else list(range(t))
    ax.set_xticks(range(t), labels, rotation=90, fontsize=7)
    ax.set(xlabel="input token (predicting the next one)", title=title)
    fig.colorbar(im, ax=ax, label="top token probability")
    save(fig, path)
    return fig


def patching_map(
    values: np.ndarray,
    path: str,
    *,
    rows: Sequence[str],
    columns: Sequence[str],
    xlabel: str = "position",
    ylabel: str = "layer",
    title: str = "activation patching: fraction of the clean logit difference restored",
):
    """Draws a patching result, e.g. ``[L + 1, T]`` residual positions or ``[L, N]`` heads, on a
    diverging colormap centered at 0 (red restores the clean answer, blue works against it).

    Args:
        values: ``[R, C]`` restored fractions; the color scale spans ``+-max(1, max |value|)``.
        path: the PNG to write, ``grid_figsize(R, C, PATCH_CELL)`` inches.
        rows: ``R`` row names (bottom to top); columns: ``C`` column names (token strings are
            escaped as labels).
        xlabel, ylabel, title: the axis labels and title.

    Returns:
        The (closed) figure; ``fig.axes[0].images[0]`` holds ``values``.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2 or values.shape != (len(rows), len(columns)):
        raise ConfigError(
            f"patching values of shape {values.shape} need {len(rows)} rows x "
            f"{len(columns)} columns of labels"
        )
    plt = require_matplotlib("the patching map")
    r, c = values.shape
    fig, ax = plt.subplots(figsize=grid_figsize(r, c, PATCH_CELL), layout="constrained")
    finite = values[np.isfinite(values)]
    lim = max(1.0, float(np.abs(finite).max()) if finite.size else 1.0)
    im = ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", origin="lower")
    if r * c <= 400:
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if abs(v) > 0.6 * lim else "black")  # fmt: skip
    ax.set_yticks(range(r), [token_label(x) for x in rows], fontsize=7)
    ax.set_xticks(range(c), [token_label(x) for x in columns], rotation=90, fontsize=7)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.colorbar(im, ax=ax, label="restored fraction")
    save(fig, path)
    return fig
