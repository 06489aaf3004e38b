"""matplotlib on demand, figure sizes that are known before drawing, and saving a PNG."""

from __future__ import annotations

import os

from llmzoo.errors import ConfigError

PLOT_INSTALL = "pip install 'llmzoo[plot]'"
DPI = 100  # pixels per inch of every PNG: a figure of (w, h) inches is (w * DPI, h * DPI) pixels
MARGIN = (1.5, 1.0)  # inches around a grid of panels: labels, titles and a colorbar
MIN_SIZE = (6.0, 2.5)  # inches: room for a title and a colorbar however small the grid


def require_matplotlib(what: str = "plotting"):
    """Returns ``matplotlib.pyplot``, set to the non-interactive Agg backend.

    Args:
        what: the feature that needs matplotlib, named in the error.

    Raises:
        ConfigError: matplotlib is not installed (one line with the install command).
    """
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(f"{what} needs matplotlib: {PLOT_INSTALL}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid_figsize(rows: int, cols: int, panel: tuple[float, float]) -> tuple[float, float]:
    """The size ``(w, h)`` in inches of a ``rows x cols`` grid of ``panel``-sized axes plus
    :data:`MARGIN`, at least :data:`MIN_SIZE`.

    The PNG is then ``round(w * DPI) x round(h * DPI)`` pixels.
    """
    w, h = cols * panel[0] + MARGIN[0], rows * panel[1] + MARGIN[1]
    return max(w, MIN_SIZE[0]), max(h, MIN_SIZE[1])


def save(fig, path: str) -> None:
    """Writes ``fig`` to ``path`` as a PNG at :data:`DPI` (creating its folder) and closes it.

    The whole canvas is saved (no tight bounding box), so the pixel size is the figure size
    times :data:`DPI`.
    """
    plt = require_matplotlib()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI, format="png")
    finally:
        plt.close(fig)
