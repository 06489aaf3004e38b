"""Training curves: loss, validation loss, learning rate and gradient norm against the step, with
several runs overlaid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from llmzoo.errors import ConfigError
from llmzoo.viz.figure import grid_figsize, require_matplotlib, save

CURVE_METRICS = ("loss", "val_loss", "lr", "grad_norm")
METRIC_TITLES = {
    "loss": "training loss (nats/token)",
    "val_loss": "validation loss (nats/token)",
    "lr": "learning rate",
    "grad_norm": "gradient norm (global L2)",
    "accuracy": "training next-token accuracy",
    "val_accuracy": "validation accuracy",
}
PANEL = (5.0, 3.2)  # inches per metric panel
MARKER_BELOW = 30  # runs with fewer points than this draw markers, so a lone point shows

# name in a figure -> names a metrics.jsonl record may hold it under, first found wins
METRIC_ALIASES = {"lr": ("lr", "learning_rate"), "grad_norm": ("grad_norm", "gnorm")}

Curve = tuple[np.ndarray, np.ndarray]  # (steps [P], values [P])


def metric_curves(records: Sequence[Mapping], metrics: Sequence[str]) -> dict[str, Curve]:
    """``{metric: (steps, values)}`` from ``metrics.jsonl`` records, for each metric any record
    holds (under its name or an alias of :data:`METRIC_ALIASES`), in step order; non-numeric and
    non-finite values are skipped."""
    out = {}
    for metric in metrics:
        pairs = []
        for rec in records:
            key = next((k for k in METRIC_ALIASES.get(metric, (metric,)) if k in rec), None)
            value = rec.get(key) if key else None
            if isinstance(value, (int, float)) and math.isfinite(value) and "step" in rec:
                pairs.append((rec["step"], float(value)))
        if pairs:
            pairs.sort(key=lambda p: p[0])
            steps, values = zip(*pairs, strict=True)
            out[metric] = (np.asarray(steps), np.asarray(values))
    return out


def training_curves(
    runs: Sequence[tuple[str, Mapping[str, Curve]]],
    path: str,
    metrics: Sequence[str] = CURVE_METRICS,
):
    """Draws one panel per metric (two columns) with one line per run, labelled by its name.

    Args:
        runs: ``(name, {metric: (steps [P], values [P])})`` per run; a run may lack a metric.
        path: the PNG to write, ``grid_figsize(ceil(M / 2), min(M, 2), PANEL)`` inches at
            :data:`~llmzoo.viz.figure.DPI` for ``M`` metrics.
        metrics: the panels, in order.

    Returns:
        The (closed) figure; ``fig.axes[i].lines[j]`` holds run ``j``'s curve of metric ``i``
        (runs lacking the metric are skipped).

    Raises:
        ConfigError: no metrics, or a metric that no run has.
    """
    if not metrics:
        raise ConfigError("no metrics to plot; name some, e.g. loss,val_loss,lr,grad_norm")
    for m in metrics:
        if not any(m in curves for _, curves in runs):
            have = sorted({k for _, curves in runs for k in curves})
            raise ConfigError(f"no run has metric {m!r}; the runs have: {', '.join(have)}")
    plt = require_matplotlib("llmzoo plot")
    cols = min(len(metrics), 2)
    rows = math.ceil(len(metrics) / cols)
    fig = plt.figure(figsize=grid_figsize(rows, cols, PANEL), layout="constrained")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name, curves in runs:
            if metric in curves:
                steps, values = curves[metric]
                marker = "o" if len(steps) < MARKER_BELOW else None
                ax.plot(steps, values, label=name, marker=marker, markersize=3)
        ax.set(title=METRIC_TITLES.get(metric, metric), xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, path)
    return fig
