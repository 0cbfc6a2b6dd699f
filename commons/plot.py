"""Show attribution maps: one overlay as a uint8 image (numpy only), or a grid of overlays.

:func:`overlay` blends a colour-mapped, normalised map into an image and needs nothing but
numpy (and TensorFlow, for the normalisation filters): write its output with
``tf.io.encode_png``. :func:`plot_attributions` draws a grid (one row per image: the image,
then each method's overlay) with matplotlib, an optional dependency
(``pip install "saliencekit[plot]"``). It builds a :class:`matplotlib.figure.Figure`
directly, without pyplot, so the user's backend and pyplot's global state are left alone.

Display conventions, shared by both:

- **images**: integer images are divided by 255; float images within [0, 1] are shown as
  they are; any other range (``[-1, 1]``, standardised, ``[0, 255]`` floats) is min-max
  scaled per image. Grey images (one channel, or none) are shown in grey.
- **maps**: each map is normalised for display by itself with a filter of
  :mod:`saliencekit.commons.postprocess` (``normalization``): ``"minmax"`` (default),
  ``"absolute"`` or ``"positive"``. A constant map shows as zeros, never NaN.
- **colour**: ``(1 - alpha) * image + alpha * cmap(map)``. The built-in colormaps
  ``"jet"``, ``"hot"`` and ``"gray"`` are matplotlib's own (piecewise linear) computed in
  numpy. Any other matplotlib colormap name needs matplotlib; a callable mapping values in
  [0, 1] of shape ``(H, W)`` to colours ``(H, W, 3 or 4)`` (a matplotlib ``Colormap``) works
  too.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import postprocess, validation

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

INSTALL_HINT = 'pip install "saliencekit[plot]"'

#: name -> per-map display filter (from :mod:`saliencekit.commons.postprocess`).
NORMALIZATIONS = {
    "minmax": postprocess.normalize,
    "absolute": postprocess.absolute_normalize,
    "positive": postprocess.positive_normalize,
}

#: Built-in colormaps: (red, green, blue) control points ``(x, value)`` of piecewise linear
#: functions on [0, 1], as in matplotlib's segment data (``matplotlib/_cm.py``).
COLORMAPS = {
    "jet": (
        ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
        ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
        ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
    ),
    "hot": (
        ((0.0, 0.0416), (0.365079, 1.0), (1.0, 1.0)),
        ((0.0, 0.0), (0.365079, 0.0), (0.746032, 1.0), (1.0, 1.0)),
        ((0.0, 0.0), (0.746032, 0.0), (1.0, 1.0)),
    ),
    "gray": (((0.0, 0.0), (1.0, 1.0)),) * 3,
}


def require_matplotlib() -> None:
    """Raise an ImportError saying how to install matplotlib if it cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"Plotting needs matplotlib, which is not installed: {INSTALL_HINT} "
            "(or pip install matplotlib)."
        ) from error


def overlay(
    image: Any,
    attribution: Any,
    cmap: str | Callable = "jet",
    alpha: float = 0.5,
    *,
    normalization: str = "minmax",
) -> np.ndarray:
    """One image with its map blended in, as uint8 ``(H, W, 3)``; needs no matplotlib.

    Parameters
    ----------
    image : array-like
        ``(H, W, 3)``, ``(H, W, 1)`` or ``(H, W)``, in any range (see the module's display
        conventions).
    attribution : array-like
        The map, ``(H, W)`` or ``(H, W, 1)``, the image's height and width.
    cmap : str or callable, default "jet"
        ``"jet"``, ``"hot"``, ``"gray"``, another matplotlib colormap name (needs
        matplotlib), or a callable ``values (H, W) in [0, 1] -> colours (H, W, 3 or 4)``.
    alpha : float, default 0.5
        Weight of the map's colours, in [0, 1]: 0 shows the image, 1 the map.
    normalization : {"minmax", "absolute", "positive"}, default "minmax"
        How the map is scaled to [0, 1] for display (a constant map gives zeros).

    Examples
    --------
    >>> import numpy as np
    >>> from saliencekit.commons.plot import overlay
    >>> image = np.zeros((4, 4, 3), "float32")
    >>> heat = np.zeros((4, 4), "float32"); heat[0, 0] = 1.0
    >>> blended = overlay(image, heat, alpha=1.0)
    >>> blended.shape, blended.dtype
    ((4, 4, 3), dtype('uint8'))
    >>> blended[0, 0].tolist(), blended[3, 3].tolist()  # jet: dark red high, dark blue low
    ([128, 0, 0], [0, 0, 128])
    """
    pixels = _images("image", image, batched=False)
    heat = _maps("attribution", attribution, pixels.shape[:-1], "the image's")
    colormap = _colormap(cmap)
    alpha = _alpha(alpha)
    filter_ = _normalization(normalization)
    return _blend(pixels, _normalized(filter_, heat), colormap, alpha)


def plot_attributions(
    images: Any,
    maps: Any,
    *,
    row_titles: Sequence[str] | None = None,
    cmap: str | Callable = "jet",
    alpha: float = 0.5,
    normalization: str = "minmax",
    cell_size: float = 2.0,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """A grid of overlays: one row per image, the image then one column per method.

    Parameters
    ----------
    images : array-like
        ``(N, H, W, 3)``, ``(N, H, W, 1)`` or ``(N, H, W)``, in any range (see the module's
        display conventions).
    maps : array-like or mapping
        One method's maps, ``(N, H, W)`` or ``(N, H, W, 1)`` (a ``tf.Tensor`` from
        ``explain`` works), or a mapping ``{method name: maps}`` for one column per method,
        in the mapping's order, titled with its keys.
    row_titles : sequence of str, optional
        One title per image (for example its class), written left of each row.
    cmap, alpha, normalization
        As in :func:`overlay`.
    cell_size : float, default 2.0
        Width and height of each cell, in inches.
    path : str or path-like, optional
        Where to write the figure (PNG, or any format matplotlib infers from the suffix).
    dpi : int, default 100
        Resolution of the written file, in dots per inch.

    Returns
    -------
    matplotlib.figure.Figure
        Not attached to pyplot: it displays in a notebook, and ``figure.savefig`` writes it.

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install "saliencekit[plot]"``).

    Examples
    --------
    >>> import numpy as np
    >>> from saliencekit.commons.plot import plot_attributions
    >>> images = np.random.default_rng(0).random((2, 8, 8, 3))
    >>> figure = plot_attributions(images, {"A": images[..., 0], "B": images[..., 1]})
    >>> len(figure.axes)  # 2 rows of (image, A, B)
    6
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pixels = _images("images", images, batched=True)
    if isinstance(maps, Mapping):
        if not maps:
            raise validation.value_error(
                "maps", "an array of maps or a non-empty mapping {method name: maps}", "{}"
            )
        columns = {str(name): value for name, value in maps.items()}
        arguments = {str(name): f"maps[{name!r}]" for name in maps}
    else:
        columns, arguments = {"attribution": maps}, {"attribution": "maps"}
    expected = pixels.shape[:-1]
    heats = {name: _maps(arguments[name], value, expected, "the images'")
             for name, value in columns.items()}
    titles = _row_titles(row_titles, len(pixels))
    colormap = _colormap(cmap)
    alpha = _alpha(alpha)
    filter_ = _normalization(normalization)
    cell_size = _positive_number("cell_size", cell_size)
    dpi = validation.positive_int("dpi", dpi)

    rows, cols = len(pixels), 1 + len(heats)
    figure = Figure(figsize=(cell_size * cols, cell_size * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    panels = [pixels] + [_blend(pixels, _normalized(filter_, heat), colormap, alpha)
                         for heat in heats.values()]
    for col, (title, panel) in enumerate(zip(["image", *heats], panels)):
        axes[0, col].set_title(title)
        for row in range(rows):
            axis = axes[row, col]
            axis.imshow(panel[row], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
    for row, title in enumerate(titles):
        axes[row, 0].set_ylabel(title)
    if path is not None:
        figure.savefig(path, dpi=dpi)
    return figure


# -- checks and conversions ----------------------------------------------------------------
def _array(argument: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise validation.type_error(argument, "a numeric array", validation._describe(value))
    return array


def _images(argument: str, value: Any, batched: bool) -> np.ndarray:
    """Images as float32 ``([N,] H, W, 3)`` in [0, 1], by the display conventions."""
    array = _array(argument, value)
    rank = 4 if batched else 3
    names = ("(N, H, W, 3), (N, H, W, 1) or (N, H, W)" if batched
             else "(H, W, 3), (H, W, 1) or (H, W)")
    if array.ndim == rank - 1:
        array = array[..., None]
    if array.ndim != rank or array.shape[-1] not in (1, 3) or 0 in array.shape:
        raise validation.value_error(
            argument, f"images of shape {names}", validation._describe(np.asarray(value))
        )
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        pixels = np.clip(array.astype(np.float32) / (1 if array.dtype == bool else 255), 0, 1)
    else:
        pixels = array.astype(np.float32)
        validation.finite_array(argument, pixels)
        single = pixels[None] if not batched else pixels
        axes = (1, 2, 3)
        low = single.min(axis=axes, keepdims=True)
        high = single.max(axis=axes, keepdims=True)
        in_unit = (low >= 0) & (high <= 1)
        span = np.where(high > low, high - low, 1)
        single = np.where(in_unit, single, (single - low) / span)
        pixels = single if batched else single[0]
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def _maps(argument: str, value: Any, expected: tuple, whose: str) -> np.ndarray:
    """A map ``expected + (1,)`` (batched or not) as float32, checked against the images."""
    array = _array(argument, value)
    if array.ndim == len(expected) + 1 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.shape != tuple(expected):
        shapes = "(N, H, W) or (N, H, W, 1)" if len(expected) == 3 else "(H, W) or (H, W, 1)"
        raise validation.value_error(
            argument,
            f"a map of shape {shapes} matching {whose} {tuple(expected)}",
            validation._describe(value),
            hint="Reduce channels first (reducer='max')." if array.ndim > len(expected) else "",
        )
    array = array.astype(np.float32)
    validation.finite_array(argument, array)
    return array


def _normalized(filter_: Callable, heat: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1] by itself (a single map is a batch of one)."""
    batch = heat if heat.ndim == 3 else heat[None]
    scaled = np.asarray(filter_(batch[..., None]))[..., 0]
    return np.clip(scaled if heat.ndim == 3 else scaled[0], 0.0, 1.0)


def _blend(pixels: np.ndarray, heat: np.ndarray, colormap: Callable, alpha: float) -> np.ndarray:
    """``(1 - alpha) * pixels + alpha * colormap(heat)`` as uint8."""
    colours = np.asarray(colormap(heat), np.float32)[..., :3]
    blended = (1.0 - alpha) * pixels + alpha * colours
    return np.rint(np.clip(blended, 0.0, 1.0) * 255).astype(np.uint8)


def _colormap(cmap: Any) -> Callable[[np.ndarray], np.ndarray]:
    if callable(cmap):
        return cmap
    if isinstance(cmap, str) and cmap in COLORMAPS:
        channels = COLORMAPS[cmap]
        return lambda values: np.stack(
            [np.interp(values, *zip(*points)) for points in channels], axis=-1
        )
    expected = (f"one of {', '.join(map(repr, COLORMAPS))}, a matplotlib colormap name or a "
                "callable values -> colours")
    if not isinstance(cmap, str):
        raise validation.type_error("cmap", expected, validation._describe(cmap))
    try:
        import matplotlib
    except ImportError:
        raise validation.value_error(
            "cmap", expected, repr(cmap),
            hint=f"Other colormaps need matplotlib: {INSTALL_HINT}.") from None
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise validation.value_error(
            "cmap", expected, f"{cmap!r}, which matplotlib does not know") from None


def _row_titles(value: Any, count: int) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise validation.type_error(
            "row_titles", f"a sequence of {count} titles", validation._describe(value))
    titles = [str(title) for title in value]
    if len(titles) != count:
        raise validation.value_error(
            "row_titles", f"{count} titles (one per image)", f"{len(titles)} titles")
    return titles


def _alpha(alpha: Any) -> float:
    alpha = validation.non_negative_float("alpha", alpha)
    if alpha > 1:
        raise validation.value_error("alpha", "a number in [0, 1]", alpha)
    return alpha


def _normalization(name: Any) -> Callable:
    return NORMALIZATIONS[validation.one_of("normalization", name, tuple(NORMALIZATIONS))]


def _positive_number(argument: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise validation.type_error(argument, "a number > 0", validation._describe(value))
    if not np.isfinite(value) or value <= 0:
        raise validation.value_error(argument, "a finite number > 0", value)
    return float(value)


# -- text: tokens coloured by attribution ------------------------------------------------
def _token_scores(tokens: Any, scores: Any) -> tuple[list[str], np.ndarray]:
    if isinstance(tokens, str) or not isinstance(tokens, Iterable):
        raise validation.type_error("tokens", "a sequence of token strings",
                                    validation._describe(tokens))
    words = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in tokens]
    values = _array("map", scores).astype(np.float64)
    if values.ndim == 2 and values.shape[-1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or len(values) != len(words):
        raise validation.value_error(
            "map", f"one value per token, shape ({len(words)},)", f"shape {values.shape}",
            "Pass map[:len(tokens)] for a padded sequence's map.")
    if not np.all(np.isfinite(values)):
        raise validation.value_error("map", "finite values", "NaN or infinite values")
    return words, values


def _signed_colours(values: np.ndarray) -> np.ndarray:
    """``(T, 4)`` RGBA: red for positive, blue for negative, opacity ``|v| / max |v|``."""
    scale = np.max(np.abs(values)) if values.size else 0.0
    strength = np.abs(values) / scale if scale > 0 else np.zeros_like(values)
    colours = np.where(values[:, None] >= 0, [[0.84, 0.15, 0.16]], [[0.12, 0.47, 0.71]])
    return np.concatenate([colours, strength[:, None]], axis=1)


def text_html(tokens: Sequence[str], map: Any) -> str:
    """Tokens coloured by their attribution, as an HTML fragment.

    Parameters
    ----------
    tokens : sequence of str (or bytes)
        The tokens, in order. They are HTML-escaped.
    map : array of shape ``(T,)`` (or ``(T, 1)``)
        One value per token (a token map of an explainer: ``maps[i]``).

    Each token is a ``<span>`` whose background is red for a positive value and blue for a
    negative one, its opacity ``|value| / max |value|`` (so a map's sign is kept and zero,
    padding say, is uncoloured); its value is in the ``title`` (shown on hover).

    Examples
    --------
    >>> from saliencekit.commons.plot import text_html
    >>> html = text_html(["a", "<b>", "c"], [1.0, -0.5, 0.0])
    >>> "&lt;b&gt;</span>" in html and "rgba(31, 120, 181, 0.500)" in html
    True
    """
    import html

    words, values = _token_scores(tokens, map)
    spans = []
    for word, value, (r, g, b, a) in zip(words, values, _signed_colours(values)):
        spans.append(
            f'<span style="background-color: rgba({round(r * 255)}, {round(g * 255)}, '
            f'{round(b * 255)}, {a:.3f}); padding: 1px 3px" title="{value:.4g}">'
            f"{html.escape(word)}</span>")
    return f'<div class="saliencekit-text" style="line-height: 1.9">{" ".join(spans)}</div>'


def plot_text(tokens: Sequence[str], maps: Any, titles: Any = None,
              chars_per_line: int = 60, fontsize: float = 11.0) -> Figure:
    """A matplotlib figure of tokens coloured by attribution: one panel per map.

    Parameters
    ----------
    tokens : sequence of str (or bytes)
    maps : array ``(T,)`` for one map, ``(M, T)`` for several (one method each), or a dict
        ``{title: map}``.
    titles : sequence of str or None
        The panels' titles (the dict's keys when ``maps`` is a dict).
    chars_per_line : int, default 60
        Lines wrap after about this many characters (tokens are drawn in a monospace
        font, so their widths are known without a renderer).
    fontsize : float, default 11

    Colours are those of :func:`text_html`. The figure is built without pyplot (the user's
    backend is untouched): save it with ``fig.savefig(path)``.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    if isinstance(maps, Mapping):
        titles, maps = list(maps), list(maps.values())
    rows = _array("maps", maps) if not isinstance(maps, list) else np.stack(
        [_array("maps", m) for m in maps])
    rows = rows[None] if rows.ndim == 1 else rows
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) != len(rows):
            raise validation.value_error("titles", f"{len(rows)} titles, one per map",
                                         f"{len(titles)} titles")
    width = validation.positive_int("chars_per_line", chars_per_line)
    panels = []
    for row in rows:
        words, values = _token_scores(tokens, row)
        lines, column, placed = 0, 0, []
        for word, colour in zip(words, _signed_colours(values)):
            if column and column + len(word) > width:
                lines, column = lines + 1, 0
            placed.append((column, lines, word, colour))
            column += len(word) + 1
        panels.append((placed, lines + 1))
    inch = fontsize / 72 * 1.9  # one line of text
    heights = [lines * inch + (0.3 if titles else 0.1) for _, lines in panels]
    # constrained layout: each title above its panel's tokens, not on the previous panel's
    figure = Figure(figsize=(width * fontsize / 72 * 0.62 + 0.4, sum(heights) + 0.2),
                    constrained_layout=True)
    axes = figure.subplots(len(panels), 1, squeeze=False,
                           gridspec_kw={"height_ratios": heights})[:, 0]
    for index, (ax, (placed, lines)) in enumerate(zip(axes, panels)):
        ax.set_xlim(0, width)
        ax.set_ylim(lines, 0)
        ax.axis("off")
        if titles:
            ax.set_title(titles[index], fontsize=fontsize, loc="left")
        for column, line, word, colour in placed:
            ax.text(column, line + 0.5, word, family="monospace", fontsize=fontsize,
                    va="center", ha="left",
                    bbox={"facecolor": tuple(colour), "edgecolor": "none", "pad": 1.5})
    return figure
