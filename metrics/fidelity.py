"""Faithfulness: does the model's score move the way a map says it should?

Every metric here is a compiled kernel on the shared runner: the perturbed inputs are built
inside it, at most ``batch_size`` of them per forward pass, so memory is bounded by
``batch_size`` whatever ``steps`` or ``nb_samples``, and the number of forward passes is the
metric's own (its limit): ``steps + 1`` per input for Deletion and Insertion,
``nb_samples + 1`` for MuFidelity, 2 for the average drop/increase/gain, one per percentage
for ROAD.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import tensorflow as tf

from ..commons import validation
from .base import ExplanationMetric, order_ranks, spearman

_EPS = 1e-8


def _check_baseline(baseline_mode):
    if callable(baseline_mode):
        return baseline_mode
    if isinstance(baseline_mode, bool) or not isinstance(baseline_mode, numbers.Real) or \
            not np.isfinite(baseline_mode):
        raise validation.type_error(
            "baseline_mode", "a finite number or a callable baseline_mode(inputs) -> "
            "baselines", validation._describe(baseline_mode))
    return float(baseline_mode)


def _fraction(argument: str, value, low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise validation.type_error(argument, "a number in (0, 1]", validation._describe(value))
    if not (0 < value <= 1):
        raise validation.value_error(argument, "a number in (0, 1]", value)
    return float(value)


def curve_area(curves: Any) -> np.ndarray:
    """Per-curve areas ``(N,)`` of curves ``(N, K)`` sampled at ``K`` equal steps over
    ``[0, 1]`` (trapezoids; a 1-D curve gives one area): what :class:`Deletion` and
    :class:`Insertion` average in ``evaluate``, from their ``detailed_evaluate`` curves.

    >>> curve_area([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]])
    array([0.5, 1. ])
    """
    values = np.asarray(curves, np.float64)
    if values.ndim not in (1, 2) or values.shape[-1] < 2:
        raise validation.value_error("curves", "curves (N, K) or one curve (K,), K >= 2",
                                     f"shape {values.shape}")
    return np.mean((values[..., 1:] + values[..., :-1]) * 0.5, axis=-1)


class _Perturbation(ExplanationMetric):
    """Helpers of the perturbation kernels: feature masks, baselines.

    A multi-input model's inputs are perturbed each by its own map: the maps (one per
    input, in the inputs' structure) are flattened and concatenated into one row of
    features per input row, ranked or weighted together, and the per-feature masks split
    back to each input (a feature is a position with its channels, or a column)."""

    baseline_mode: Any = 0.0
    _single_input = False

    @property
    def _feature_count(self) -> int:
        return sum(int(np.prod(f)) for f in self._leaf_feature_shapes)

    def _first(self, inputs) -> tf.Tensor:
        return tf.nest.flatten(inputs)[0]

    def _per_feature(self, flags: tf.Tensor, inputs: Any) -> Any:
        """``(P, F)`` per-feature values -> for each input, values broadcastable against
        it ``(P, *features[, 1])``, in the inputs' structure."""
        leaves = tf.nest.flatten(inputs)
        shapes = self._leaf_feature_shapes
        parts = tf.split(flags, [int(np.prod(f)) for f in shapes], axis=1) if len(
            leaves) > 1 else [flags]
        return tf.nest.pack_sequence_as(inputs, [
            tf.reshape(part, [-1, *f] + ([1] if leaf.shape.rank >= 3 else []))
            for part, f, leaf in zip(parts, shapes, leaves)])

    def _mix(self, inputs: Any, kept: Any, base: Any) -> Any:
        """The inputs where ``kept`` (0/1 per feature, from :meth:`_per_feature`) is 1,
        the baseline where it is 0. A constant baseline costs one product (two if it is
        not 0); a callable's per-row baselines three operations."""
        if not callable(self.baseline_mode):
            value = self.baseline_mode
            return tf.nest.map_structure(
                lambda x, k: x * k if value == 0 else x * k + value * (1.0 - k), inputs, kept)
        return tf.nest.map_structure(lambda x, k, b: b + (x - b) * k, inputs, kept, base)

    def _baseline(self, inputs: Any) -> Any:
        """A scalar, or per-row baselines ``(B, ...)`` of a callable ``baseline_mode``
        (called on the inputs' structure for a multi-input model)."""
        if not callable(self.baseline_mode):
            return tf.constant(self.baseline_mode, tf.float32)
        value = self.baseline_mode(inputs)
        if self._data.structured:
            return tf.nest.map_structure(
                lambda v, x: tf.broadcast_to(tf.cast(v, tf.float32), tf.shape(x)),
                value, inputs)
        return tf.broadcast_to(tf.cast(value, tf.float32), tf.shape(inputs))

    def _rows(self, inputs, targets, **more) -> dict:
        rows = {"x": inputs, **more}
        if targets is not None:
            rows["t"] = targets
        return rows


class CausalFidelity(_Perturbation):
    """Deletion and Insertion (Petsiuk et al. 2018): the score along a path that flips
    features from one state to the other in the map's order, most important first.

    Parameters
    ----------
    model, inputs, targets, batch_size, operator, activation
        See :class:`~saliencekit.metrics.base.BaseAttributionMetric`.
    baseline_mode : float or callable, default 0.0
        The removed state of a feature: a value, or ``baseline_mode(inputs) -> baselines``
        (traced inside the kernel: TensorFlow operations on a ``(B, ...)`` tensor).
    steps : int, default 10
        Points of the curve after the start: ``steps + 1`` scores per input, after
        ``0, k_1, ..., k_steps`` features flipped (``np.linspace(0, max, steps + 1)``
        rounded down, as xplique). ``-1``: every feature, one at a time.
    max_percentage_perturbed : float in (0, 1], default 1.0
        The share of the features flipped at the last step.

    A feature is a position (pixel, time step) with all its channels, or a column of a
    table; maps with channels are averaged over them. Ties in a map are broken by position
    (the first in row-major order goes first); xplique leaves them to numpy's sort.
    A multi-input model takes one map per input (a list or dict in the inputs' structure,
    as explainers return them): the features of all inputs are ranked together, so maps
    of different inputs must be on one scale (xplique takes one input only).

    ``evaluate(maps)`` is the area under the curve (trapezoids on an axis normalised to
    [0, 1], averaged over inputs; as xplique's). ``detailed_evaluate(maps)`` gives the
    per-input curves ``(N, steps + 1)`` (xplique gives a dict of the mean curve:
    ``curves.mean(0)``, keyed by ``metric.features_perturbed``).
    """

    _insertion = False

    def __init__(
        self,
        model: Any,
        inputs: Any,
        targets: Any = None,
        batch_size: int | None = 64,
        baseline_mode: float | Any = 0.0,
        steps: int = 10,
        max_percentage_perturbed: float = 1.0,
        operator: Any = None,
        activation: str | None = None,
        *,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.baseline_mode = _check_baseline(baseline_mode)
        if steps != -1:
            validation.positive_int("steps", steps)
        self.steps = steps
        self.max_percentage_perturbed = _fraction(
            "max_percentage_perturbed", max_percentage_perturbed)
        super().__init__(model, inputs, targets, batch_size, operator, activation,
                         jit_compile=jit_compile, strategy=strategy)
        most = int(np.floor(self._feature_count * self.max_percentage_perturbed))
        steps = most if steps == -1 else steps
        #: how many features are flipped at each point of the curve
        self.features_perturbed = np.linspace(0, most, steps + 1).astype(np.int32)

    def _summary(self, curves: np.ndarray) -> float:
        return float(np.mean(curve_area(curves)))

    def _step(self, inputs, targets, offset, seed, maps, valid):
        batch = tf.shape(self._first(inputs))[0]
        phi = tf.reshape(maps, (batch, -1))
        rank = order_ranks(phi)  # each feature's place in the order
        flipped = tf.constant(self.features_perturbed)
        baseline = self._baseline(inputs)

        def compute(rows, variant, row, start):
            x = rows["x"]
            flip = rows["rank"] < tf.gather(flipped, variant)[:, None]
            kept = tf.cast(flip if self._insertion else ~flip, tf.float32)
            path = self._mix(x, self._per_feature(kept, x), rows["base"])
            return self._score(path, rows.get("t"))

        return self._over_variants(len(self.features_perturbed), valid,
                                   self._rows(inputs, targets, rank=rank, base=baseline),
                                   compute)


class Deletion(CausalFidelity):
    """Deletion (Petsiuk et al. 2018, *RISE*, https://arxiv.org/abs/1806.07421): the score
    as the most important features (by the map) are removed, from the input to the
    baseline. A faithful map makes it drop fast: lower is better.

    Parameters are those of :class:`CausalFidelity`, in xplique's order.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.metrics import Deletion
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> x = np.ones((3, 4), "float32")
    >>> metric = Deletion(model, x, [0, 1, 0], steps=4)
    >>> metric.detailed_evaluate(np.random.rand(3, 4)).shape
    (3, 5)
    """


class Insertion(CausalFidelity):
    """Insertion (Petsiuk et al. 2018, *RISE*, https://arxiv.org/abs/1806.07421): the
    score as the most important features are put back into the baseline, from the
    baseline to the input. A faithful map makes it rise fast: higher is better.

    Parameters are those of :class:`CausalFidelity`, in xplique's order.
    """

    _insertion = True


class MuFidelity(_Perturbation):
    """MuFidelity (Bhatt et al. 2020, *Evaluating and Aggregating Feature-based Model
    Explanations*, https://arxiv.org/abs/2005.00631, def. 3): the Spearman correlation,
    over random subsets ``S`` of features set to the baseline, between the score's drop
    ``f(x) - f(x_S)`` and the map's sum over ``S``. Higher is better (1: the map ranks
    subsets as the model does).

    Parameters
    ----------
    model, inputs, targets, batch_size, operator, activation
        See :class:`~saliencekit.metrics.base.BaseAttributionMetric`.
    grid_size : int or None, default 9
        Subsets of cells of a ``grid_size`` grid along each spatial axis (the original
        pixel-wise subsets with ``None``). Ignored for tables (a cell is a column).
    subset_percent : float, default 0.2
        Probability of each cell to be in a subset.
    baseline_mode : float or callable, default 0.0
        As in :class:`Deletion`.
    nb_samples : int, default 200
        Subsets per input.
    seed : int or None, default None (keyword-only)
        Subsets are drawn inside the kernel, per input, keyed by ``(seed, the input's
        index, subset)``: a seed repeats a run exactly, whatever ``batch_size``.

    Differences from xplique: each input gets its own subsets (xplique draws one set for
    all inputs, from TensorFlow's global generator); series take a grid over time steps
    (xplique's over time steps and channels); a subset is ``nb_samples + 1`` passes per
    input, the clean score included.
    """

    _stochastic = True

    def __init__(
        self,
        model: Any,
        inputs: Any,
        targets: Any = None,
        batch_size: int | None = 64,
        grid_size: int | None = 9,
        subset_percent: float = 0.2,
        baseline_mode: float | Any = 0.0,
        nb_samples: int = 200,
        operator: Any = None,
        activation: str | None = None,
        *,
        seed: int | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.grid_size = None if grid_size is None else validation.positive_int(
            "grid_size", grid_size)
        self.subset_percent = _fraction("subset_percent", subset_percent)
        self.baseline_mode = _check_baseline(baseline_mode)
        self.nb_samples = validation.positive_int("nb_samples", nb_samples)
        self.seed = validation.optional_seed("seed", seed)
        super().__init__(model, inputs, targets, batch_size, operator, activation,
                         jit_compile=jit_compile, strategy=strategy)

    def _grid(self, shape: tuple) -> tuple[tuple, list]:
        """For inputs of sample shape ``shape``: the cells' shape and, per feature axis,
        the cell of each position."""
        features = self._features_of(shape)
        if len(shape) < 2 or self.grid_size is None:
            return features, [np.arange(s) for s in features]
        grid = tuple(min(self.grid_size, s) for s in features)
        # nearest-neighbour upsampling with half-pixel centres (tf.image.resize's)
        cells = [np.minimum(((np.arange(s) + 0.5) * g / s).astype(np.int64), g - 1)
                 for s, g in zip(features, grid)]
        return grid, cells

    def _step(self, inputs, targets, offset, seed, maps, valid):
        batch = tf.shape(self._first(inputs))[0]
        grids = []
        for shape in self._data.sample_shapes:  # the cell of each feature, flat
            grid, cells = self._grid(shape)
            cell = np.ravel_multi_index(np.meshgrid(*cells, indexing="ij"), grid)
            grids.append((grid, tf.constant(cell.reshape(-1))))
        threshold = float(tf.math.ndtri(self.subset_percent))  # P(z < t) = subset_percent
        baseline = self._baseline(inputs)
        # the map summed per cell, once per batch: a subset's attribution is then a sum
        # over its cells, not over every feature
        phi = tf.reshape(maps, (batch, -1))
        parts = tf.split(phi, [int(c.shape[0]) for _, c in grids], axis=1) if len(
            grids) > 1 else [phi]
        per_cell = tf.concat([
            tf.transpose(tf.math.unsorted_segment_sum(tf.transpose(part), cell,
                                                      int(np.prod(grid))))
            for part, (grid, cell) in zip(parts, grids)], axis=1)  # (B, cells)

        def compute(rows, variant, row, start):
            x = rows["x"]
            clean = tf.cast(variant > 0, tf.float32)[:, None]  # variant 0: the clean input
            cuts, kept = [], []
            for leaf, (grid, cell) in enumerate(grids):  # each input its own subsets
                z = self._noise(grid, seed, offset, valid, variant, row, stream=leaf)
                cut = tf.reshape(tf.cast(z < threshold, tf.float32),
                                 (tf.shape(z)[0], -1)) * clean  # (P, cells)
                cuts.append(cut)
                kept.append(tf.gather(1.0 - cut, cell, axis=1))  # (P, features)
            cut = cuts[0] if len(cuts) == 1 else tf.concat(cuts, 1)
            kept = kept[0] if len(kept) == 1 else tf.concat(kept, 1)
            attribution = tf.reduce_sum(rows["phi"] * cut, axis=1)
            perturbed = self._mix(x, self._per_feature(kept, x), rows["base"])
            return self._score(perturbed, rows.get("t")), attribution

        scores, attributions = self._over_variants(
            self.nb_samples + 1, valid,
            self._rows(inputs, targets, phi=per_cell, base=baseline), compute, outputs=2)
        drops = scores[:, :1] - scores[:, 1:]
        return spearman(drops, attributions[:, 1:])


class _MaskedScore(_Perturbation):
    """The score of ``x * M`` against ``x``'s, ``M`` the map's absolute value min-max
    normalised per input (xplique's mask). Subclasses give the per-input value."""

    def __init__(
        self,
        model: Any,
        inputs: Any,
        targets: Any = None,
        batch_size: int | None = 64,
        operator: Any = None,
        activation: str | None = None,
        *,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        super().__init__(model, inputs, targets, batch_size, operator, activation,
                         jit_compile=jit_compile, strategy=strategy)

    def _value(self, base, after):
        raise NotImplementedError

    def _step(self, inputs, targets, offset, seed, maps, valid):
        batch = tf.shape(self._first(inputs))[0]
        mask = tf.abs(tf.reshape(maps, (batch, -1)))
        low = tf.reduce_min(mask, 1, keepdims=True)
        mask = (mask - low) / (tf.reduce_max(mask, 1, keepdims=True) - low + _EPS)

        def compute(rows, variant, row, start):
            x = rows["x"]
            kept = tf.where(variant[:, None] > 0, rows["mask"], 1.0)
            return self._score(tf.nest.map_structure(
                tf.multiply, x, self._per_feature(kept, x)), rows.get("t"))

        scores = self._over_variants(2, valid, self._rows(inputs, targets, mask=mask),
                                     compute)
        return self._value(scores[:, 0], scores[:, 1])


class AverageDropMetric(_MaskedScore):
    """Average drop (Chattopadhay et al. 2018, *Grad-CAM++*,
    https://arxiv.org/abs/1710.11063): ``relu(f(x) - f(x * M)) / f(x)`` per input, ``M``
    the map min-max normalised. Lower is better. Meant for probabilities: use
    ``activation="softmax"`` with a model that outputs logits.

    Parameters: ``model, inputs, targets, batch_size, operator, activation``, as xplique's.
    """

    def _value(self, base, after):
        return tf.nn.relu(base - after) / (base + _EPS)


class AverageIncreaseMetric(_MaskedScore):
    """Average increase in confidence (Chattopadhay et al. 2018, *Grad-CAM++*,
    https://arxiv.org/abs/1710.11063): the share of inputs whose score rises when masked
    by the map, ``f(x * M) > f(x)``. Higher is better.
    """

    def _value(self, base, after):
        return tf.cast(after > base, tf.float32)


class AverageGainMetric(_MaskedScore):
    """Average gain (Zhang et al. 2024, *Opti-CAM*, https://arxiv.org/abs/2301.07002):
    ``relu(f(x * M) - f(x)) / (1 - f(x))`` per input. Higher is better; meant for
    probabilities (``activation="softmax"``).
    """

    def _value(self, base, after):
        return tf.nn.relu(after - base) / (1.0 - base + _EPS)


#: ROAD's neighbour weights (Rong et al.'s released code): 1/6 for the 4 direct neighbours,
#: 1/12 for the 4 diagonal ones.
_ROAD_WEIGHTS = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]],
                         np.float32)


def _pyramid_fill(images: tf.Tensor, kept: tf.Tensor) -> tf.Tensor:
    """A smooth first guess of the removed pixels from the kept ones only (push-pull): the
    kept pixels averaged down a pyramid of 2x2 cells, each hole then filled from the
    coarser level. ``kept`` ``(P, H, W, 1)``: 1 where kept."""
    value = images * kept
    weight = tf.broadcast_to(kept, tf.shape(images[..., :1]))
    levels = [(value, weight)]
    height, width = images.shape[1], images.shape[2]
    while height > 1 or width > 1:
        value = tf.nn.avg_pool2d(value, 2, 2, "SAME")
        weight = tf.nn.avg_pool2d(weight, 2, 2, "SAME")
        levels.append((value, weight))
        height, width = (height + 1) // 2, (width + 1) // 2
    filled = tf.math.divide_no_nan(*levels[-1])
    for value, weight in reversed(levels[:-1]):
        coarse = tf.image.resize(filled, tf.shape(value)[1:3], "bilinear")
        filled = tf.where(weight > 0, tf.math.divide_no_nan(value, weight), coarse)
    return filled


def linear_imputation(images: tf.Tensor, removed: tf.Tensor, max_iterations: int,
                      tolerance: float = 1e-4) -> tf.Tensor:
    """ROAD's linear imputation: each removed pixel (``removed`` ``(P, H, W, 1)``, 1 where
    removed) becomes the weighted mean of its neighbours (:data:`_ROAD_WEIGHTS`, those
    inside the image), removed neighbours included, so the removed pixels solve one sparse
    linear system per image and channel. Solved by conjugate gradients (the system is
    symmetric and positive definite where a region of removed pixels touches a kept one),
    matrix-free with a 3x3 convolution, from a first guess made of the kept pixels only
    (:func:`_pyramid_fill`, 10-20% fewer iterations than from 0; nothing of the removed
    pixels enters the result at any tolerance), until the residual is below ``tolerance``
    times the right-hand side's norm for every image and channel, or after
    ``max_iterations``. The default ``1e-4`` left imputed pixels within about ``1e-3`` of
    the exact solution on 64x64 images (a tenth of ROAD's default noise); ``1e-5`` takes
    about 20% more iterations."""
    channels = images.shape[-1]
    kernel = tf.constant(np.tile(_ROAD_WEIGHTS[:, :, None, None], (1, 1, channels, 1)))

    def spread(v):
        return tf.nn.depthwise_conv2d(v, kernel, [1, 1, 1, 1], "SAME")

    m = tf.broadcast_to(removed, tf.shape(images))
    degree = spread(tf.ones_like(images[:1]))  # weight of each pixel's in-image neighbours

    def apply(v):  # v is 0 on kept pixels: the iterates live on the removed ones
        return m * (degree * v - spread(v))

    b = m * spread((1.0 - m) * images)
    axes = [1, 2]
    target = tolerance**2 * tf.reduce_sum(b * b, axes, keepdims=True) + 1e-20
    x = m * _pyramid_fill(images, 1.0 - removed)
    r = b - apply(x)
    p = r
    rs = tf.reduce_sum(r * r, axes, keepdims=True)

    def cond(i, x, r, p, rs):
        return (i < max_iterations) & tf.reduce_any(rs > target)

    def body(i, x, r, p, rs):
        ap = apply(p)
        alpha = tf.math.divide_no_nan(rs, tf.reduce_sum(p * ap, axes, keepdims=True))
        x = x + alpha * p
        r = r - alpha * ap
        new = tf.reduce_sum(r * r, axes, keepdims=True)
        p = r + tf.math.divide_no_nan(new, rs) * p
        return i + 1, x, r, p, new

    _, x, _, _, _ = tf.while_loop(cond, body, [tf.constant(0), x, r, p, rs],
                                  parallel_iterations=1)
    return images * (1.0 - m) + m * x


class ROAD(_Perturbation):
    """ROAD, RemOve And Debias (Rong et al. 2022, *A Consistent and Efficient Evaluation
    Strategy for Attribution Methods*, https://arxiv.org/abs/2202.00449): the score after
    removing a share of the pixels in the map's order, the removed pixels imputed by noisy
    linear imputation (each the weighted mean of its neighbours, plus Gaussian noise), so
    that the shape of what was removed does not leak the class.

    Parameters
    ----------
    model, inputs, targets, batch_size, operator, activation
        See :class:`~saliencekit.metrics.base.BaseAttributionMetric`.
    percentages : sequence of floats in (0, 1), default (0.1, 0.2, ..., 0.9)
        The shares of pixels removed: one forward pass per input each.
    order : {"morf", "lerf"}, default "morf"
        Most relevant first (a faithful map makes the score fall: lower is better) or
        least relevant first (the score should stay: higher is better).
    noise : float, default 0.01
        Standard deviation of the noise added to imputed pixels, in the inputs' units
        (the authors' value, for normalised images).
    max_iterations : int or None, default None
        Conjugate-gradient iterations of the imputation at most; ``None``: ``2 * (H + W)``.
    tolerance : float, default 1e-4 (keyword-only)
        The imputation stops when its residual is below ``tolerance`` times the norm of
        its right-hand side (see :func:`linear_imputation`: imputed pixels within about
        1e-3 of the exact solution at the default).
    seed : int or None, default None (keyword-only)
        The imputation noise is keyed by ``(seed, input index, percentage)``.

    ``evaluate(maps)`` is the mean score over the percentages (the area under the ROAD
    curve); ``detailed_evaluate(maps)`` gives the per-input curves
    ``(N, len(percentages))``. The paper reports accuracy; set ``operator`` to score what
    you need (the default scores the target's output). Images ``(N, H, W, C)`` only.
    """

    _stochastic = True
    _single_input = True  # images, imputed from their neighbours

    def __init__(
        self,
        model: Any,
        inputs: Any,
        targets: Any = None,
        batch_size: int | None = 64,
        operator: Any = None,
        activation: str | None = None,
        percentages: Any = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        order: str = "morf",
        noise: float = 0.01,
        max_iterations: int | None = None,
        *,
        tolerance: float = 1e-4,
        seed: int | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        values = np.asarray(percentages, np.float64).reshape(-1)
        if values.size == 0 or not np.all((values > 0) & (values < 1)):
            raise validation.value_error("percentages", "shares of pixels in (0, 1)",
                                         repr(percentages))
        self.percentages = tuple(float(v) for v in values)
        if order not in ("morf", "lerf"):
            raise validation.value_error("order", "'morf' or 'lerf'", repr(order))
        self.order = order
        self.noise = validation.non_negative_float("noise", noise)
        self.max_iterations = None if max_iterations is None else validation.positive_int(
            "max_iterations", max_iterations)
        self.tolerance = validation.non_negative_float("tolerance", tolerance)
        self.seed = validation.optional_seed("seed", seed)
        super().__init__(model, inputs, targets, batch_size, operator, activation,
                         jit_compile=jit_compile, strategy=strategy)
        if len(self._sample_shape) != 3:
            raise validation.value_error(
                "inputs", "images of shape (N, H, W, C) (ROAD imputes pixels from their "
                "neighbours)", f"inputs of shape (N, {', '.join(map(str, self._sample_shape))})")

    def _step(self, inputs, targets, offset, seed, maps, valid):
        batch = tf.shape(inputs)[0]
        height, width = self._feature_shape
        count = self._feature_count
        removed_counts = tf.constant(
            [round(p * count) for p in self.percentages], tf.int32)
        phi = tf.reshape(maps, (batch, -1))
        rank = order_ranks(phi, descending=self.order == "morf")
        iterations = self.max_iterations or 2 * (height + width)

        def compute(rows, variant, row, start):
            x = rows["x"]
            removed = tf.cast(rows["rank"] < tf.gather(removed_counts, variant)[:, None],
                              tf.float32)
            removed = self._per_feature(removed, x)
            imputed = linear_imputation(x, removed, iterations, self.tolerance)
            if self.noise:
                z = self._noise(tuple(x.shape[1:]), seed, offset, valid, variant, row)
                imputed = imputed + self.noise * removed * z
            return self._score(imputed, rows.get("t"))

        return self._over_variants(len(self.percentages), valid,
                                   self._rows(inputs, targets, rank=rank), compute)
