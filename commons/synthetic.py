"""Synthetic images whose class evidence is known pixel by pixel.

:func:`shapes` draws one outlined shape per image (a disk, a square, a triangle or a plus) on
a cluttered background. The class is decided by the shape alone: colours, position, size,
background and distractor strokes are drawn from the same distributions for every class. The
mask of each image holds exactly the pixels the shape coloured, so an attribution map can be
scored against it (pointing game, mass inside the mask) without any annotation.

What is drawn, per image (vectorised in numpy: 2000 images of 64x64 take about half a
second):

- **background**: a base colour, a linear colour gradient in a random direction, smooth
  low-frequency noise (a 4x4 grid of random colours, bilinearly upsampled) and pixel noise,
  all kept within a dark band ``[0, 0.45]``;
- **distractors**: thin (one pixel wide) straight strokes, each image's in one colour drawn
  like the shapes' fill, at least two pixels away from the shape. They carry no class
  information and cannot be mistaken for a shape, which is filled and at least five pixels
  across;
- **the shape**: a side drawn from ``shape_size``, a random position, a light fill (each
  channel in ``[0.55, 1]``) and a one-pixel dark outline (each channel in ``[0, 0.2]``): the
  shape's pixels that touch a pixel outside it (of their four neighbours). The disk is
  inscribed in its square box, the triangle is upright (apex at the top) and the plus's arms
  are a third of the side thick.

Shapes and strokes are flat colours: pixel noise is in the background only, so the mask is
exactly the pixels of the fill and outline colours. The outline puts the shape's strongest
edge (fill to outline) inside the mask. Gradient maps peak on edges, and without an outline
half of each edge's peak would fall on the background pixels just outside the shape.

Every random choice is drawn whatever the options, so ``distractors=0`` or ``noise=0`` with
the same seed gives the same scenes without the strokes or the pixel noise: an ablation.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from . import validation

#: The class names, in label order.
CLASS_NAMES = ("disk", "square", "triangle", "plus")

_BACKGROUND = (0.0, 0.45)  # colour band of the background
_FILL = (0.55, 1.0)  # colour band of the shapes' fill and of the strokes
_OUTLINE = (0.0, 0.2)  # colour band of the shapes' outline
_GAP = 2  # pixels between the shape's box and any stroke
_CANDIDATES = 12  # strokes proposed per image; the first that fit are drawn
_COARSE = 4  # the low-frequency noise is a _COARSE x _COARSE grid, upsampled


class Shapes(NamedTuple):
    """A synthetic data set: ``images, labels, masks, class_names = shapes(...)``."""

    images: np.ndarray
    """float32 ``(n, size, size, 3)`` in [0, 1]."""
    labels: np.ndarray
    """int64 ``(n,)``, indices into ``class_names``."""
    masks: np.ndarray
    """bool ``(n, size, size)``: exactly the pixels coloured by the shape."""
    class_names: tuple[str, ...]


def shapes(
    n: int,
    size: int = 64,
    seed: int | None = 0,
    *,
    shape_size: int | tuple[int, int] | None = None,
    distractors: int | tuple[int, int] = (1, 3),
    noise: float = 0.03,
) -> Shapes:
    """Draw ``n`` images of one shape each, with the shape's class and exact mask.

    Parameters
    ----------
    n : int
        Number of images (>= 1). Classes are balanced: each label occurs ``n // 4`` or
        ``n // 4 + 1`` times, in random order.
    size : int, default 64
        Image side in pixels (>= 16).
    seed : int or None, default 0
        Seed of the generator: the same seed gives identical arrays. ``None`` draws fresh
        entropy.
    shape_size : int, (int, int) or None, default None
        Side of a shape's bounding square in pixels: fixed, or the smallest and largest
        (drawn uniformly), with ``5 <= smallest <= largest <= size // 2``. ``None`` scales
        ``(12, 22)`` at 64 pixels to ``size``.
    distractors : int or (int, int), default (1, 3)
        How many distractor strokes an image has: a number, or the smallest and largest
        number (each image draws one uniformly). ``0`` for none. Strokes that cannot be
        placed clear of the shape (rare, on small images) are left out.
    noise : float, default 0.03
        Standard deviation of the background's pixel noise (uniform, independent per
        pixel and channel).

    Returns
    -------
    Shapes
        ``images`` float32 ``(n, size, size, 3)`` in [0, 1], ``labels`` int64 ``(n,)``,
        ``masks`` bool ``(n, size, size)`` and ``class_names``
        (``("disk", "square", "triangle", "plus")``).

    Examples
    --------
    >>> from saliencekit.commons.synthetic import shapes
    >>> data = shapes(8, size=32, seed=1)
    >>> data.images.shape, data.images.dtype, data.masks.shape
    ((8, 32, 32, 3), dtype('float32'), (8, 32, 32))
    >>> sorted(data.class_names[label] for label in data.labels)
    ['disk', 'disk', 'plus', 'plus', 'square', 'square', 'triangle', 'triangle']
    >>> image, mask = data.images[0], data.masks[0]
    >>> len(np.unique(image[mask], axis=0))  # the shape's fill and outline colours
    2
    """
    n = validation.positive_int("n", n)
    size = validation.positive_int("size", size)
    if size < 16:
        raise validation.value_error("size", "an integer >= 16", size)
    seed = validation.optional_seed("seed", seed)
    low, high = _shape_size(shape_size, size)
    fewest, most = _distractors(distractors)
    noise = validation.non_negative_float("noise", noise)

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
    side = rng.integers(low, high + 1, n)
    top = rng.integers(1, size - side)  # one pixel clear of the border at least
    left = rng.integers(1, size - side)
    fill = rng.uniform(*_FILL, (n, 3)).astype(np.float32)
    outline = rng.uniform(*_OUTLINE, (n, 3)).astype(np.float32)
    stroke = rng.uniform(*_FILL, (n, 3)).astype(np.float32)
    count = fewest + np.floor(rng.random(n) * (most - fewest + 1)).astype(int)

    masks = _draw_shapes(labels, side, top, left, size)
    strokes = _draw_strokes(rng, count, side, top, left, size)
    images = _background(rng, n, size, noise)
    for pixels, colour in ((strokes, stroke), (masks, fill), (_boundary(masks), outline)):
        image, row, col = np.nonzero(pixels)
        images[image, row, col] = colour[image]
    return Shapes(images, labels, masks, CLASS_NAMES)


def _shape_size(value, size: int) -> tuple[int, int]:
    if value is None:
        return max(5, round(size * 12 / 64)), max(5, round(size * 22 / 64))
    low, high = validation.int_tuple("shape_size", value, 2)
    if not 5 <= low <= high <= size // 2:
        raise validation.value_error(
            "shape_size",
            f"sides (smallest, largest) with 5 <= smallest <= largest <= size // 2 = {size // 2}",
            (low, high),
        )
    return low, high


def _distractors(value) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, numbers.Integral) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in pair)
        or not 0 <= pair[0] <= pair[1]
    ):
        raise validation.value_error(
            "distractors",
            "an integer >= 0 or a pair (fewest, most) with 0 <= fewest <= most",
            repr(value),
        )
    return int(pair[0]), int(pair[1])


def _draw_shapes(labels, side, top, left, size: int) -> np.ndarray:
    """Each image's shape mask, from coordinates relative to the shape's box: ``u`` across,
    ``v`` down, both in (0, 1) at the centres of the box's pixels."""
    centres = np.arange(size) + 0.5
    u = (centres[None, None, :] - left[:, None, None]) / side[:, None, None]
    v = (centres[None, :, None] - top[:, None, None]) / side[:, None, None]
    masks = np.zeros((len(labels), size, size), bool)
    for label, draw in enumerate(_DRAWERS):
        chosen = labels == label
        uc, vc = u[chosen], v[chosen]
        box = (uc > 0) & (uc < 1) & (vc > 0) & (vc < 1)
        masks[chosen] = box & draw(uc - 0.5, vc - 0.5, vc)
    return masks


def _disk(x, y, v):
    return x**2 + y**2 <= 0.25


def _square(x, y, v):
    return np.ones(np.broadcast_shapes(x.shape, y.shape), bool)


def _triangle(x, y, v):
    return np.abs(x) <= v / 2  # apex at the top, base at the bottom


def _plus(x, y, v):
    return (np.abs(x) <= 1 / 6) | (np.abs(y) <= 1 / 6)  # arms a third of the side thick


#: One drawer per class, in label order: ``(x, y)`` from the box's centre and ``v`` from its
#: top, in units of the side -> whether the pixel is in the shape (inside its box).
_DRAWERS = (_disk, _square, _triangle, _plus)


def _boundary(masks: np.ndarray) -> np.ndarray:
    """The pixels of each mask with one of their four neighbours outside it (masks never
    touch the image's border)."""
    interior = masks.copy()
    interior[:, 1:] &= masks[:, :-1]
    interior[:, :-1] &= masks[:, 1:]
    interior[:, :, 1:] &= masks[:, :, :-1]
    interior[:, :, :-1] &= masks[:, :, 1:]
    return masks & ~interior


def _draw_strokes(rng, count, side, top, left, size: int) -> np.ndarray:
    """Thin straight strokes: ``_CANDIDATES`` random segments per image, of which the first
    ``count`` lying inside the image and clear of the shape's box are drawn."""
    n = len(side)
    shape = (n, _CANDIDATES)
    start = rng.uniform(0, size - 1, (*shape, 2))
    angle = rng.uniform(0, 2 * np.pi, shape)
    length = rng.uniform(size / 8, size / 4, shape)
    t = np.linspace(0.0, 1.0, int(np.ceil(size / 4)) + 1)  # samples at most a pixel apart
    rows = np.rint(start[..., 0, None] + t * (length * np.sin(angle))[..., None]).astype(int)
    cols = np.rint(start[..., 1, None] + t * (length * np.cos(angle))[..., None]).astype(int)
    inside = ((rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)).all(-1)
    clear = ~(_near(rows, top, side) & _near(cols, left, side)).any(-1)
    usable = inside & clear
    drawn = usable & (np.cumsum(usable, axis=1) <= count[:, None])
    image = np.broadcast_to(np.arange(n)[:, None, None], rows.shape)
    strokes = np.zeros((n, size, size), bool)
    strokes[image[drawn], rows[drawn], cols[drawn]] = True
    return strokes


def _near(position, low, side):
    """Whether positions ``(n, k, m)`` fall within ``_GAP`` pixels of ``[low, low + side)``."""
    low = low[:, None, None]
    return (position >= low - _GAP) & (position < low + side[:, None, None] + _GAP)


def _background(rng, n: int, size: int, noise: float) -> np.ndarray:
    """Base colour + linear gradient + upsampled coarse noise + pixel noise, in the
    background band.

    The first three are sums of (a function of the row) x (a function of the column), so
    they are computed at once as ``rows @ weights @ columns.T`` over the basis functions:
    the ``_COARSE`` bilinear hat functions, the centred coordinate and the constant 1.
    """
    centred = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    basis = np.concatenate(
        [_bilinear(_COARSE, size), centred[:, None], np.ones((size, 1), np.float32)], axis=1
    )
    ramp, one = _COARSE, _COARSE + 1  # indices of the centred coordinate and of 1
    weights = np.zeros((n, _COARSE + 2, _COARSE + 2, 3), np.float32)
    weights[:, :_COARSE, :_COARSE] = rng.normal(0.0, 0.05, (n, _COARSE, _COARSE, 3))
    angle = rng.uniform(0, 2 * np.pi, (n, 1))
    amplitude = rng.uniform(0.0, 0.2, (n, 3))
    weights[:, ramp, one] = amplitude * np.sin(angle)  # the gradient: down the rows ...
    weights[:, one, ramp] = amplitude * np.cos(angle)  # ... and across the columns
    weights[:, one, one] = rng.uniform(0.05, 0.3, (n, 3))  # the base colour
    images = np.einsum("ya,nabc,xb->nyxc", basis, weights, basis, optimize=True)
    # uniform pixel noise of standard deviation `noise` (cheaper to draw than a normal)
    pixels = rng.random(images.shape, dtype=np.float32)
    pixels -= 0.5
    pixels *= np.float32(noise * np.sqrt(12))
    images += pixels
    return np.clip(images, *_BACKGROUND, out=images)


def _bilinear(source: int, target: int) -> np.ndarray:
    """The ``(target, source)`` matrix of 1-D bilinear upsampling (half-pixel centres)."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    below = np.minimum(np.floor(position).astype(int), source - 2)
    fraction = position - below
    matrix = np.zeros((target, source), np.float32)
    matrix[np.arange(target), below] = 1 - fraction
    matrix[np.arange(target), below + 1] = fraction
    return matrix


# -- text: a keyword among distractors ------------------------------------------------------
class Keywords(NamedTuple):
    """A synthetic text task: ``ids, labels, masks, vocabulary = keywords(...)``."""

    ids: np.ndarray
    """int32 ``(n, length)`` token ids, 0 is padding."""
    labels: np.ndarray
    """int64 ``(n,)``: the class of the keyword in each sequence."""
    masks: np.ndarray
    """bool ``(n, length)``: the keyword's position (exactly one per sequence)."""
    vocabulary: tuple[str, ...]
    """Token strings by id: ``"<pad>"``, then ``"key0", ...`` (one keyword per class),
    then ``"w0", ...`` (distractors)."""


def keywords(
    n: int,
    length: int = 16,
    classes: int = 4,
    seed: int | None = 0,
    *,
    distractor_words: int = 40,
    min_length: int | None = None,
) -> Keywords:
    """Token sequences whose class is decided by one keyword among distractors.

    Each sequence has a random length in ``[min_length, length]`` (padded with id 0 at the
    end), distractor words drawn uniformly from ``distractor_words`` ids that carry no class
    information (same distribution for every class), and exactly one keyword, ``key<c>``
    for class ``c``, at a uniformly random position among its tokens. The mask holds that
    position: the ground truth of a per-token pointing game.

    Parameters
    ----------
    n : int
        Number of sequences (>= 1); classes are balanced as in :func:`shapes`.
    length : int, default 16
        Sequence length with padding (>= 2).
    classes : int, default 4
        Number of classes (and keywords), >= 2.
    seed : int or None, default 0
    distractor_words : int, default 40
        Size of the distractor vocabulary (>= 1).
    min_length : int or None, default None (= length // 2)
        Shortest sequence before padding, in ``[1, length]``.

    Examples
    --------
    >>> from saliencekit.commons.synthetic import keywords
    >>> data = keywords(6, length=8, classes=3, seed=1)
    >>> data.ids.shape, data.masks.sum(axis=1).tolist()
    ((6, 8), [1, 1, 1, 1, 1, 1])
    >>> bool((data.ids[data.masks] == data.labels + 1).all())
    True
    """
    n = validation.positive_int("n", n)
    length = validation.positive_int("length", length)
    if length < 2:
        raise validation.value_error("length", "an integer >= 2", length)
    classes = validation.positive_int("classes", classes)
    if classes < 2:
        raise validation.value_error("classes", "an integer >= 2", classes)
    words = validation.positive_int("distractor_words", distractor_words)
    shortest = length // 2 if min_length is None else validation.positive_int(
        "min_length", min_length)
    if shortest > length:
        raise validation.value_error("min_length", f"at most length={length}", shortest)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)
    lengths = rng.integers(shortest, length + 1, n)
    ids = rng.integers(1 + classes, 1 + classes + words, (n, length)).astype(np.int32)
    positions = np.floor(rng.random(n) * lengths).astype(np.int64)
    ids[np.arange(length)[None] >= lengths[:, None]] = 0
    ids[np.arange(n), positions] = 1 + labels
    masks = np.zeros((n, length), bool)
    masks[np.arange(n), positions] = True
    vocabulary = ("<pad>", *(f"key{c}" for c in range(classes)),
                  *(f"w{w}" for w in range(words)))
    return Keywords(ids, labels, masks, vocabulary)
