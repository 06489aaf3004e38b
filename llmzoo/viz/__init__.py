"""Plots for runs and for what a model computes: training curves, attention maps, the logit lens
and activation patching, and one self-contained HTML page of them (:mod:`llmzoo.viz.html`).

matplotlib is optional (``pip install 'llmzoo[plot]'``): it is imported on first use, with the
non-interactive Agg backend, and a missing install is one :class:`~llmzoo.errors.ConfigError`.
Every figure function takes numpy arrays, writes a PNG whose pixel size follows from its
arguments (``figsize * dpi``, no tight bounding box), and returns the closed
:class:`matplotlib.figure.Figure` so that callers can read what was drawn.
"""

from llmzoo.viz.curves import training_curves
from llmzoo.viz.figure import DPI, PLOT_INSTALL, grid_figsize, require_matplotlib
from llmzoo.viz.maps import attention_grid, logit_lens_grid, patching_map

__all__ = [
    "DPI",
    "PLOT_INSTALL",
    "attention_grid",
    "grid_figsize",
    "logit_lens_grid",
    "patching_map",
    "require_matplotlib",
    "training_curves",
]
