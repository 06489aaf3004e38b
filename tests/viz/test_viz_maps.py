"""The figure functions: PNGs of the stated pixel size that show the arrays they were given."""

import numpy as np
import pytest

from llmzoo import viz
from llmzoo.errors import ConfigError

image = pytest.importorskip("matplotlib.image")


def png_shape(path) -> tuple[int, int]:
    """(height, width) in pixels of a PNG, decoded."""
    assert path.stat().st_size > 0
    return image.imread(str(path)).shape[:2]


def test_grid_figsize_by_hand():
    # 3 x 4 panels of 2.4 in, plus 1.5 x 1.0 in of margin; small grids keep a minimum size
    assert viz.grid_figsize(3, 4, (2.4, 2.4)) == pytest.approx((11.1, 8.2))
    assert viz.grid_figsize(1, 2, (0.6, 0.4)) == (6.0, 2.5)


def test_attention_grid_draws_each_head(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.random((2, 3, 5, 5)).astype(np.float32)
    probs /= probs.sum(-1, keepdims=True)
    tokens = ["▁a", "$x", "\n", "c", "d"]
    fig = viz.attention_grid(probs, str(tmp_path / "a.png"), tokens=tokens, layers=[4, 7])
    assert png_shape(tmp_path / "a.png") == (580, 870)  # (2 * 2.4 + 1) x (3 * 2.4 + 1.5) in
    heatmaps = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(heatmaps) == 6
    for i, ax in enumerate(heatmaps):
        layer, head = divmod(i, 3)
        np.testing.assert_array_equal(ax.images[0].get_array(), probs[layer, head])
        assert ax.get_title() == f"layer {[4, 7][layer]} head {head}"
    bottom = [t.get_text() for t in heatmaps[3].get_xticklabels()]
    assert bottom == ["▁a", r"\$x", "\\n", "c", "d"]  # escaped: no mathtext, no line break
    assert [t.get_text() for t in heatmaps[0].get_xticklabels()] == [""] * 5  # only the bottom


def test_attention_grid_long_prompts_have_no_labels(tmp_path):
    probs = np.full((1, 1, 30, 30), 1 / 30, np.float32)
    fig = viz.attention_grid(probs, str(tmp_path / "a.png"), tokens=["t"] * 30)
    assert list(fig.axes[0].get_xticks()) == []
    with pytest.raises(ConfigError, match=r"\[L, N, T, S\]"):
        viz.attention_grid(probs[0], str(tmp_path / "b.png"))


def test_logit_lens_grid_cells(tmp_path):
    probs = np.array([[0.1, 0.9, 0.3], [0.5, 0.2, 0.8]] * 3, np.float32)  # 6 rows x 3 positions
    top = [[f"r{r}c{c}" for c in range(3)] for r in range(6)]
    fig = viz.logit_lens_grid(probs, top, str(tmp_path / "l.png"), tokens=["x", "y", "z"])
    assert png_shape(tmp_path / "l.png") == (340, 600)  # 6 * 0.4 + 1 in high, 6 in minimum wide
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), probs)
    assert [t.get_text() for t in ax.texts] == [s for row in top for s in row]
    # dark cells (low probability on viridis) get white text
    assert [t.get_color() for t in ax.texts[:3]] == ["white", "black", "white"]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["embed", "layer 0", "layer 1", "layer 2", "layer 3", "layer 4"]
    with pytest.raises(ConfigError, match="top_tokens"):
        viz.logit_lens_grid(probs, top[:2], str(tmp_path / "m.png"))


@pytest.mark.parametrize("scale, lim", [(0.5, 1.0), (2.5, 2.5)])
def test_patching_map_diverges_around_zero(tmp_path, scale, lim):
    values = np.linspace(-0.2, 1.0, 6 * 12, dtype=np.float32).reshape(6, 12) * scale
    cols = [f"t{i}" for i in range(12)]
    rows = ["embed"] + [f"layer {i}" for i in range(5)]
    fig = viz.patching_map(values, str(tmp_path / "p.png"), rows=rows, columns=cols)
    assert png_shape(tmp_path / "p.png") == (340, 870)  # (6 * 0.4 + 1) x (12 * 0.6 + 1.5) in
    im = fig.axes[0].images[0]
    np.testing.assert_allclose(im.get_array(), values)
    assert im.get_clim() == pytest.approx((-lim, lim))  # centered: 0 is white
    assert im.get_cmap().name == "RdBu_r"
    assert fig.axes[0].texts[-1].get_text() == f"{values[-1, -1]:.2f}"
    with pytest.raises(ConfigError, match="labels"):
        viz.patching_map(values, str(tmp_path / "q.png"), rows=rows[:2], columns=cols)
