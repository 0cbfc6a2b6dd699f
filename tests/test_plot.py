"""Overlays (numpy only) and the plotted grid (matplotlib, the plot extra)."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from saliencekit.commons import plot
from saliencekit.commons.plot import overlay, plot_attributions

RNG = np.random.default_rng(0)
IMAGES = RNG.random((2, 8, 8, 3)).astype("float32")
MAPS = RNG.random((2, 8, 8, 1)).astype("float32")
INSTALL = 'pip install "saliencekit[plot]"'


def displayed(figure):
    """The pixel arrays shown in each axis of a figure, row by row."""
    return [axis.images[0].get_array() for axis in figure.axes]


# -- overlay: no matplotlib needed -------------------------------------------------------------
def test_overlay_is_uint8_rgb_and_follows_the_map():
    heat = np.zeros((8, 8), "float32")
    heat[2:4, 5:7] = 3.0
    blended = overlay(IMAGES[0], heat)
    assert blended.shape == (8, 8, 3) and blended.dtype == np.uint8
    assert not np.array_equal(blended[2, 5], blended[0, 0])
    exact = overlay(np.zeros((8, 8, 3)), heat, alpha=1.0)  # jet: 1 -> dark red, 0 -> dark blue
    assert exact[2, 5].tolist() == [128, 0, 0] and exact[0, 0].tolist() == [0, 0, 128]
    half = overlay(np.ones((8, 8, 3)), heat[..., None], alpha=0.5)  # (H, W, 1) maps too
    assert half[2, 5].tolist() == [191, 128, 128]  # (1 + 0.5) / 2, (1 + 0) / 2, ...


def test_alpha_zero_shows_the_image_rescaled_by_its_range():
    heat = MAPS[0]
    pixels = np.rint(IMAGES[0] * 255).astype(np.uint8)
    assert np.array_equal(overlay(IMAGES[0], heat, alpha=0.0), pixels)  # [0, 1] as is
    assert np.array_equal(overlay(pixels, heat, alpha=0.0), pixels)  # uint8 / 255
    low, high = IMAGES[0].min(), IMAGES[0].max()
    stretched = np.rint((IMAGES[0] - low) / (high - low) * 255).astype(np.uint8)
    for scaled in (IMAGES[0] * 2 - 1, IMAGES[0] * 255.0, IMAGES[0] * 40 - 7):  # min-max
        assert np.abs(overlay(scaled, heat, alpha=0.0).astype(int) - stretched).max() <= 1
    grey = overlay(IMAGES[0, ..., 0], heat, alpha=0.0)  # (H, W) and (H, W, 1): grey
    assert (grey == grey[..., :1]).all()
    assert np.array_equal(grey, overlay(IMAGES[0, ..., :1], heat, alpha=0.0))
    assert (overlay(np.full((8, 8, 3), 5.0), heat, alpha=0.0) == 0).all()  # constant: no NaN


def test_constant_maps_show_as_zeros_not_nan():
    blue = overlay(np.zeros((8, 8, 3)), np.zeros((8, 8)), alpha=1.0)
    assert (blue == [0, 0, 128]).all()  # jet(0) everywhere
    for constant in (np.full((8, 8), 7.5), np.full((8, 8), -2.0)):  # min-max: zeros
        assert np.array_equal(overlay(np.zeros((8, 8, 3)), constant, alpha=1.0), blue)
    for normalization in plot.NORMALIZATIONS:  # all-zero maps: zeros for every filter
        assert np.array_equal(
            overlay(np.zeros((8, 8, 3)), np.zeros((8, 8)), alpha=1.0,
                    normalization=normalization), blue)


@pytest.mark.parametrize("normalization, expected", [
    ("minmax", [0, 170, 255]),  # (-2, 0, 1) -> (0, 2/3, 1)
    ("absolute", [255, 0, 128]),  # |.| / 2
    ("positive", [0, 0, 255]),
])
def test_normalization_filters(normalization, expected):
    heat = np.array([[-2.0, 0.0, 1.0]])
    grey = overlay(np.zeros((1, 3)), heat, cmap="gray", alpha=1.0, normalization=normalization)
    assert grey[0, :, 0].tolist() == expected


def test_built_in_colormaps_are_matplotlibs_and_callables_work():
    matplotlib = pytest.importorskip("matplotlib")
    values = np.linspace(0, 1, 1001)
    for name in plot.COLORMAPS:
        ours = plot._colormap(name)(values)
        theirs = matplotlib.colormaps[name](values)[:, :3]
        assert np.abs(ours - theirs).max() < 0.02, name  # matplotlib's 256-entry table
    viridis = matplotlib.colormaps["viridis"]
    heat = MAPS[0, ..., 0]
    assert np.array_equal(overlay(IMAGES[0], heat, cmap="viridis"),
                          overlay(IMAGES[0], heat, cmap=viridis))
    constant = overlay(IMAGES[0], heat, cmap=lambda v: np.ones((*v.shape, 3)), alpha=1.0)
    assert (constant == 255).all()


@pytest.mark.parametrize("call, error, words", [
    (lambda: overlay(IMAGES[0], MAPS[0, :4]), ValueError,
     "attribution: expected a map of shape (H, W) or (H, W, 1) matching the image's (8, 8), "
     "got ndarray of shape (4, 8, 1)"),
    (lambda: overlay(IMAGES[0], np.ones((8, 8, 3))), ValueError, "Reduce channels first"),
    (lambda: overlay(np.ones((8, 8, 4)), MAPS[0]), ValueError,
     "image: expected images of shape (H, W, 3), (H, W, 1) or (H, W), got ndarray of "
     "shape (8, 8, 4)"),
    (lambda: overlay(IMAGES, MAPS), ValueError, "image: expected images of shape"),
    (lambda: overlay(IMAGES[0], np.where(MAPS[0] > 0.5, np.nan, MAPS[0])), ValueError,
     "attribution: expected finite values"),
    (lambda: overlay(IMAGES[0], MAPS[0].astype(str)), TypeError,
     "attribution: expected a numeric array"),
    (lambda: overlay(IMAGES[0], MAPS[0], alpha=1.5), ValueError,
     "alpha: expected a number in [0, 1], got 1.5."),
    (lambda: overlay(IMAGES[0], MAPS[0], cmap="nope"), ValueError,
     "cmap: expected one of 'jet', 'hot', 'gray', a matplotlib colormap name"),
    (lambda: overlay(IMAGES[0], MAPS[0], cmap=3), TypeError, "cmap: expected"),
    (lambda: overlay(IMAGES[0], MAPS[0], normalization="l2"), ValueError,
     "normalization: expected one of 'minmax', 'absolute', 'positive', got 'l2'."),
    (lambda: plot_attributions(IMAGES, MAPS[:1]), ValueError,
     "maps: expected a map of shape (N, H, W) or (N, H, W, 1) matching the images' "
     "(2, 8, 8), got ndarray of shape (1, 8, 8, 1)"),
    (lambda: plot_attributions(IMAGES, {"A": MAPS, "B": MAPS[:, :4]}), ValueError,
     "maps['B']: expected a map of shape (N, H, W)"),
    (lambda: plot_attributions(IMAGES, {}), ValueError, "maps: expected an array of maps or"),
    (lambda: plot_attributions(IMAGES[..., None], MAPS), ValueError,
     "images: expected images of shape (N, H, W, 3), (N, H, W, 1) or (N, H, W)"),
    (lambda: plot_attributions(IMAGES, MAPS, row_titles=["a"]), ValueError,
     "row_titles: expected 2 titles (one per image), got 1 titles."),
    (lambda: plot_attributions(IMAGES, MAPS, row_titles="ab"), TypeError,
     "row_titles: expected a sequence of 2 titles, got 'ab'."),
    (lambda: plot_attributions(IMAGES, MAPS, cell_size=0), ValueError, "cell_size:"),
    (lambda: plot_attributions(IMAGES, MAPS, dpi=0), ValueError, "dpi: expected"),
])
def test_bad_input_names_the_argument(call, error, words):
    if "plot_attributions" in call.__code__.co_names:
        pytest.importorskip("matplotlib")
    with pytest.raises(error) as caught:
        call()
    assert words in str(caught.value)


# -- the grid: matplotlib -------------------------------------------------------------------
def test_grid_writes_a_png_of_the_figure_size(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "grid.png"
    figure = plot_attributions(IMAGES, tf.constant(MAPS), path=path, cell_size=1.0, dpi=40)
    assert path.stat().st_size > 0
    png = tf.io.decode_png(tf.io.read_file(str(path))).numpy()
    assert png.shape[:2] == (2 * 40, 2 * 40)  # 2 rows of (image, map), 1 inch each
    assert png[..., :3].std() > 0
    assert [axis.get_title() for axis in figure.axes[:2]] == ["image", "attribution"]
    plot_attributions(IMAGES, MAPS, path=str(tmp_path / "again.png"))  # a str path too
    assert (tmp_path / "again.png").stat().st_size > 0


def test_one_column_per_method_and_the_same_pixels_as_overlay():
    pytest.importorskip("matplotlib")
    maps = {"GradCAM": MAPS, "Saliency": MAPS[..., 0] ** 2, "Constant": np.zeros((2, 8, 8))}
    figure = plot_attributions(IMAGES * 255, maps, row_titles=np.array(["disk", "plus"]), alpha=0.3,
                               cmap="hot")
    assert len(figure.axes) == 2 * 4
    assert [axis.get_title() for axis in figure.axes[:4]] == ["image", *maps]
    assert [figure.axes[i].get_ylabel() for i in (0, 4)] == ["disk", "plus"]
    shown = displayed(figure)
    for row in range(2):
        image = IMAGES[row] * 255
        low, high = IMAGES[row].min(), IMAGES[row].max()
        stretched = (IMAGES[row] - low) / (high - low)  # [0, 255] floats: min-max
        assert np.abs(shown[4 * row] - stretched).max() < 1e-5
        for col, heat in enumerate(maps.values(), 1):
            expected = overlay(image, heat[row], cmap="hot", alpha=0.3)
            assert np.array_equal(shown[4 * row + col], expected)
            assert np.isfinite(shown[4 * row + col]).all()


def test_the_figure_is_not_registered_with_pyplot():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt  # Keras imports it anyway when matplotlib is installed

    before = plt.get_fignums()
    figure = plot_attributions(IMAGES, MAPS)
    assert plt.get_fignums() == before
    assert figure.canvas.__class__.__name__ == "FigureCanvasAgg"


def test_missing_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    with pytest.raises(ImportError) as caught:
        plot_attributions(IMAGES, MAPS)
    assert INSTALL in str(caught.value)
    with pytest.raises(ImportError, match="saliencekit\\[plot\\]"):
        plot.require_matplotlib()
    assert overlay(IMAGES[0], MAPS[0]).shape == (8, 8, 3)  # built-in colormaps: no matplotlib
    with pytest.raises(ValueError) as caught:
        overlay(IMAGES[0], MAPS[0], cmap="viridis")
    assert "cmap: expected" in str(caught.value) and INSTALL in str(caught.value)
