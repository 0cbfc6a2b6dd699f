"""Global sensitivity analysis on a grid of image cells: Sobol' indices and HSIC."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..commons import sampling, validation
from .sampled import SampledExplainer, check_images, store_scores

PERTURBATIONS = ("inpainting", "blurring", "amplitude")
SOBOL_ESTIMATORS = ("jansen", "homma", "janon", "glen", "saltelli")
_BLUR = 10  # xplique's blurring: a 10 x 10 box filter (cv2.blur)
_EPS = 1e-12


class _GridSensitivity(SampledExplainer):
    """Shared by Sobol and HSIC: masks on a ``grid_size x grid_size`` grid of cells, one
    value per cell (nearest-neighbour upsampled), applied by a perturbation function; the
    scores of every design are kept (4 bytes per forward pass) for the estimator."""

    _perturbed_by = "perturbation_function"

    _name = ""

    def _init_grid(self, grid_size, nb_design, sampler, perturbation_function, seed):
        self.grid_size = validation.positive_int("grid_size", grid_size)
        self.nb_design = validation.positive_int("nb_design", nb_design)
        if sampler is not None and sampler != "sobol" and not callable(sampler):
            raise validation.value_error(
                "sampler", "None (a Sobol' sequence, digitally shifted per input), 'sobol' "
                "(xplique's unscrambled sequence) or a callable sampler(dimension, nb_design)",
                repr(sampler))
        self.sampler = sampler
        if isinstance(perturbation_function, str):
            validation.one_of("perturbation_function", perturbation_function, PERTURBATIONS)
        elif not callable(perturbation_function):
            raise validation.type_error(
                "perturbation_function", f"one of {PERTURBATIONS} or a callable "
                "f(input) -> g(masks)", type(perturbation_function).__name__)
        self.perturbation_function = perturbation_function
        self._set_seed(seed)

    # -- geometry and perturbation -------------------------------------------------------------
    def _grid(self, inputs) -> tuple[int, int]:
        check_images(type(self).__name__, inputs)
        return tuple(min(self.grid_size, s) for s in inputs.shape[1:3])

    def _dimension(self, inputs) -> int:
        grid = self._grid(inputs)
        return grid[0] * grid[1]

    def _ids(self, inputs) -> tf.Tensor:
        return tf.constant(sampling.cell_map(tuple(inputs.shape[1:3]), self._grid(inputs)))

    def _baseline(self, inputs):
        if self.perturbation_function == "blurring":
            return box_blur(inputs, _BLUR)
        return None

    def _base_context(self, inputs) -> dict:
        baseline = self._baseline(inputs)
        context = {"ids": self._ids(inputs), "baseline": baseline}
        if baseline is not None:  # x * M + (1 - M) * b = b + M * (x - b): one multiply-add
            context["difference"] = inputs - baseline
        return context

    def _apply(self, inputs, values, context):
        """Perturbed copies ``(copies, B, H, W, C)`` for cell values ``(copies, B, d)``."""
        masks = tf.gather(values, context["ids"], axis=2)[..., None]  # (copies, B, H, W, 1)
        function = self.perturbation_function
        if function == "inpainting":  # x * M (xplique: x * M + (1 - M) * 0)
            return inputs[None] * masks
        if function == "blurring":
            return context["baseline"][None] + masks * context["difference"][None]
        if function == "amplitude":  # xplique's: x * (M - 0.5) * sigma, sigma = 1
            return inputs[None] * (masks - 0.5)
        per_input = tf.map_fn(  # a user's f(input) -> g(masks (n, H, W, 1))
            lambda args: tf.cast(function(args[0])(args[1]), tf.float32),
            (inputs, tf.experimental.numpy.swapaxes(masks, 0, 1)),
            fn_output_signature=tf.TensorSpec((None, *inputs.shape[1:]), tf.float32))
        return tf.experimental.numpy.swapaxes(per_input, 0, 1)

    def _points(self, dimension: int, index, seeds) -> tf.Tensor:
        """Rows ``index`` (``(n,)``) of the design in [0, 1)^dimension, per input:
        ``(n, B, dimension)``."""
        if self.sampler is None:
            return sampling.sobol_points(dimension, index, seeds[0, 1], seeds[:, 0])
        points = sampling.sobol_points(dimension, index)
        return tf.broadcast_to(points, tf.stack([tf.shape(index)[0], tf.shape(seeds)[0],
                                                 dimension]))

    def _upsample(self, inputs, cells):
        """``(B, d)`` cell values -> ``(B, H, W)`` maps, bicubic as xplique's cv2 resize."""
        grid = self._grid(inputs)
        return sampling.resize_cubic(tf.reshape(cells, (-1, *grid)), tuple(inputs.shape[1:3]))

    def _initial(self, inputs, context):
        return tf.zeros(tf.stack([self._evaluations(inputs), tf.shape(inputs)[0]]))

    def _update(self, state, index, sample, valid, aux, scores, context):
        return store_scores(state, sample, valid, scores)


class SobolAttributionMethod(_GridSensitivity):
    """Sobol' attribution: the total-order Sobol' index of each cell of a grid of masks.

    Fel, Cadène, Chalvidal, Cord, Vigouroux & Serre (2021), *Look at the Variance!
    Efficient Black-box Explanations with Sobol-based Sensitivity Analysis*, NeurIPS,
    https://arxiv.org/abs/2111.04138

    Parameters
    ----------
    model, batch_size, operator, jit_compile, strategy
        As in :class:`~saliencekit.attributions.BlackBoxExplainer` (xplique's default
        ``batch_size=256``; ``None``: every design of one input in one pass).
    grid_size : int, default 8
        Cells per side: ``d = grid_size**2`` indices per image.
    nb_design : int, default 32
        Quasi-Monte Carlo points ``N`` (a power of two: the Sobol' sequence's balance).
        The named estimators need ``N (d + 1)`` forward passes per image (matrices A and
        the ``C_i``; xplique also evaluates B, which no total-order estimator reads).
    sampler : None, "sobol" or callable, default None
        ``None``: the Sobol' sequence (``tf.math.sobol_sample``) in ``2d`` dimensions, A
        its first ``d`` coordinates and B the others, randomised per image by a random
        digital shift drawn from ``(seed, image index)`` (randomised QMC: unbiased, and
        still low-discrepancy). ``"sobol"``: the same sequence unshifted, xplique's
        default design (every image gets the same masks). A callable ``sampler(d, N)``
        returning the ``(N (d + 2), d)`` design ``[A; B; C]``, as xplique's replicated
        samplers, is called once per input shape.
    estimator : str or callable, default "jansen"
        ``"jansen"``, ``"homma"``, ``"janon"``, ``"glen"`` or ``"saltelli"`` (xplique's
        formulas, computed from the A and C scores), or a callable
        ``estimator(masks, outputs, nb_design) -> (g, g, 1)`` as xplique's estimator
        objects (then B is evaluated too: ``N (d + 2)`` passes).
    perturbation_function : str or callable, default "inpainting"
        ``"inpainting"``: ``x * M``; ``"blurring"``: ``x * M + (1 - M) * blur(x)`` (a 10 x
        10 box blur, mirrored borders, as ``cv2.blur``); ``"amplitude"``: xplique's
        ``x * (M - 0.5)``; or a callable ``f(input) -> g(masks)`` (TensorFlow ops, masks
        ``(n, H, W, 1)``), as xplique's.
    seed : int or None, default None
        The digital shift's seed (``sampler=None``); ``None`` draws a fresh one per call.

    Maps are ``(N, H, W, 1)``: the ``(g, g)`` indices resized bicubically as xplique's
    ``cv2.resize(..., INTER_CUBIC)`` (Keys' kernel, ``a = -0.75``). Images only.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import SobolAttributionMethod
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
    ...                           keras.layers.GlobalAveragePooling2D()])
    >>> sobol = SobolAttributionMethod(model, grid_size=4, nb_design=8, seed=0)
    >>> tuple(sobol(np.random.default_rng(0).random((2, 8, 8, 3)), [0, 1]).shape)
    (2, 8, 8, 1)
    """

    def __init__(
        self,
        model: keras.Model,
        grid_size: int = 8,
        nb_design: int = 32,
        sampler: Any = None,
        estimator: Any = None,
        perturbation_function: Any = "inpainting",
        batch_size: int | None = 256,
        operator: Any = None,
        *,
        seed: int | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self._init_grid(grid_size, nb_design, sampler, perturbation_function, seed)
        if self.nb_design & (self.nb_design - 1):
            raise validation.value_error("nb_design", "a power of two", self.nb_design)
        estimator = "jansen" if estimator is None else estimator
        if isinstance(estimator, str):
            validation.one_of("estimator", estimator, SOBOL_ESTIMATORS)
        elif not callable(estimator):
            raise validation.type_error(
                "estimator", f"one of {SOBOL_ESTIMATORS} or a callable "
                "estimator(masks, outputs, nb_design)", type(estimator).__name__)
        self.estimator = estimator
        super().__init__(model, batch_size=batch_size, operator=operator,
                         jit_compile=jit_compile, strategy=strategy)

    @property
    def _with_b(self) -> bool:
        return not isinstance(self.estimator, str) or callable(self.sampler)

    def _evaluations(self, inputs):
        return self.nb_design * (self._dimension(inputs) + (2 if self._with_b else 1))

    def _setup(self, inputs, targets, seeds):
        d = self._dimension(inputs)
        context = self._base_context(inputs)
        if callable(self.sampler):  # a user's [A; B; C], the same for every input
            design = np.asarray(self.sampler(d, self.nb_design), np.float32)
            expected = (self.nb_design * (d + 2), d)
            if design.shape != expected:
                raise validation.value_error(
                    "sampler", f"a callable returning the design [A; B; C] of shape {expected}",
                    f"shape {design.shape}")
            context["table"] = tf.constant(design)
        else:
            points = self._points(2 * d, tf.range(self.nb_design), seeds)  # (N, B, 2d)
            context["a"], context["b"] = points[..., :d], points[..., d:]
        return context

    def _design(self, sample, context, d: int):
        """Cell values ``(copies, B, d)`` of samples ``sample``, in xplique's order
        ``[A; (B;) C_1; ...; C_d]``, ``C_i`` being A with column ``i`` taken from B."""
        n = self.nb_design
        if "table" in context:
            return tf.gather(context["table"], sample)[:, None]
        a, b = context["a"], context["b"]
        start = 2 * n if self._with_b else n
        t = tf.maximum(sample - start, 0)
        column, row = t // n, t % n  # C is ordered (column, design)
        replaced = tf.gather(a, row) * (1.0 - tf.one_hot(column, d))[:, None] + tf.gather(
            b, row) * tf.one_hot(column, d)[:, None]
        is_a = (sample < n)[:, None, None]
        is_b = ((sample >= n) & (sample < start))[:, None, None]
        plain = tf.gather(a, tf.minimum(sample, n - 1))
        other = tf.gather(b, tf.clip_by_value(sample - n, 0, n - 1))
        return tf.where(is_a, plain, tf.where(is_b, other, replaced))

    def _perturb(self, inputs, seeds, sample, context):
        values = self._design(sample, context, self._dimension(inputs))
        values = tf.broadcast_to(values, tf.stack([tf.shape(sample)[0], tf.shape(inputs)[0],
                                                   values.shape[-1]]))
        return self._apply(inputs, values, context), None

    def _finish(self, inputs, seeds, state, context):
        d, n = self._dimension(inputs), self.nb_design
        scores = tf.transpose(state)  # (B, total)
        if not isinstance(self.estimator, str):
            indices = self._user_estimator(inputs, scores, context, d)
        else:
            a = scores[:, :n]
            c = tf.reshape(scores[:, (2 * n if self._with_b else n):], (-1, d, n))
            indices = sobol_indices(self.estimator, a, c)
        return self._upsample(inputs, indices)

    def _user_estimator(self, inputs, scores, context, d):
        grid = self._grid(inputs)
        total = self._evaluations(inputs)

        def one(args):
            outputs, a, b = args
            if "table" in context:
                table = context["table"]
            else:
                c = a[None] * (1.0 - tf.eye(d)[:, None]) + b[None] * tf.eye(d)[:, None]
                table = tf.concat([a, b, tf.reshape(c, (-1, d))], 0)
            masks = tf.reshape(table, (total, *grid, 1))
            return tf.reshape(tf.cast(self.estimator(masks, outputs, self.nb_design),
                                      tf.float32), [d])

        if "table" in context:
            a = b = tf.zeros((tf.shape(scores)[0], 1, 1))
        else:
            a, b = (tf.transpose(context[k], [1, 0, 2]) for k in ("a", "b"))
        return tf.map_fn(one, (scores, a, b), fn_output_signature=tf.TensorSpec((d,),
                                                                                 tf.float32))


def sobol_indices(estimator: str, a: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    """Total-order indices ``(B, d)`` from the scores of A ``(B, N)`` and of the ``C_i``
    ``(B, d, N)``, by xplique's formulas (variances with ``ddof=1``)."""
    n = tf.cast(tf.shape(a)[-1], tf.float32)
    mu_a = tf.reduce_mean(a, -1, keepdims=True)  # (B, 1)
    var_a = tf.maximum(tf.reduce_sum(tf.square(a - mu_a), -1, keepdims=True)
                       / tf.maximum(n - 1.0, 1.0), _EPS)
    a_ = a[:, None]  # (B, 1, N)
    if estimator == "jansen":
        return tf.reduce_sum(tf.square(a_ - c), -1) / (2.0 * n * var_a)
    e_ac = tf.reduce_mean(c * a_, -1)
    if estimator == "homma":
        return (var_a - e_ac + tf.square(mu_a)) / var_a
    if estimator == "saltelli":
        return 1.0 - (e_ac - tf.square(mu_a)) / var_a
    mu_c = tf.reduce_mean(c, -1)
    if estimator == "janon":
        mu_ac = 0.5 * (mu_a + mu_c)
        var = (tf.reduce_sum(tf.square(a), -1, keepdims=True) + tf.reduce_sum(tf.square(c), -1)
               ) / (2.0 * tf.maximum(n - 1.0, 1.0)) - tf.square(mu_ac)
        return 1.0 - (e_ac - tf.square(mu_ac)) / tf.maximum(var, _EPS)
    # glen: 1 - corr(A, C_i)
    cov = tf.reduce_sum((a_ - mu_a[..., None]) * (c - mu_c[..., None]), -1) / tf.maximum(
        n - 1.0, 1.0)
    var_c = tf.maximum(tf.reduce_sum(tf.square(c - mu_c[..., None]), -1) / tf.maximum(
        n - 1.0, 1.0), _EPS)
    return 1.0 - cov / tf.sqrt(var_a * var_c)


class HsicAttributionMethod(_GridSensitivity):
    """HSIC attribution: the dependence between each cell being kept and the score.

    Novello, Fel & Vigouroux (2022), *Making Sense of Dependence: Efficient Black-box
    Explanations Using Dependence Measure*, NeurIPS, https://arxiv.org/abs/2206.06219

    Parameters
    ----------
    model, batch_size, operator, jit_compile, strategy
        As in :class:`~saliencekit.attributions.BlackBoxExplainer` (xplique's default
        ``batch_size=256``).
    grid_size : int, default 8
        Cells per side.
    nb_design : int, default 500
        Binary masks (forward passes) per image.
    sampler : None, "sobol" or callable, default None
        ``None``: binary masks from the Sobol' sequence (a cell is kept where the
        coordinate is above 0.5), randomised per image by a digital shift drawn from
        ``(seed, image index)``. ``"sobol"``: xplique's default, unshifted (the same masks
        for every image). A callable ``sampler(d, nb_design) -> (nb_design, d)`` binary
        array (as xplique's ``Sampler(binary=True)`` objects).
    estimator : None, "binary" or callable, default None ("binary")
        xplique's ``BinaryEstimator``: the input kernel ``1 + 0.5 - (x - x')^2`` on each
        binary cell, an RBF kernel on the scores of width their median, and
        ``HSIC_i = tr(K_i H L H) / n``. Computed as ``2 x_i^T (H L H) x_i / n`` (the
        constant part of ``K_i`` vanishes against the centred ``L``): one ``(n, n)``
        matrix per image, not one per cell. A callable ``estimator(masks, outputs,
        nb_design) -> (g, g, 1)`` as xplique's estimator objects is also accepted.
    perturbation_function : str or callable, default "inpainting"
        As in :class:`SobolAttributionMethod`.
    estimator_batch_size : int or None, default None
        Cells whose index is computed at once (``None``: all): bounds the estimator's
        ``n x cells`` product; passed to a callable estimator's ``set_batch_size``.
    seed : int or None, default None
        The digital shift's seed (``sampler=None``).

    Maps are ``(N, H, W, 1)``, resized bicubically from the grid. If the scores' median is
    0, the RBF width 1 is used (xplique divides by 0). Images only.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import HsicAttributionMethod
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
    ...                           keras.layers.GlobalAveragePooling2D()])
    >>> hsic = HsicAttributionMethod(model, grid_size=4, nb_design=32, seed=0)
    >>> tuple(hsic(np.random.default_rng(0).random((2, 8, 8, 3)), [0, 1]).shape)
    (2, 8, 8, 1)
    """

    def __init__(
        self,
        model: keras.Model,
        grid_size: int = 8,
        nb_design: int = 500,
        sampler: Any = None,
        estimator: Any = None,
        perturbation_function: Any = "inpainting",
        batch_size: int | None = 256,
        estimator_batch_size: int | None = None,
        operator: Any = None,
        *,
        seed: int | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self._init_grid(grid_size, nb_design, sampler, perturbation_function, seed)
        estimator = "binary" if estimator is None else estimator
        if isinstance(estimator, str):
            validation.one_of("estimator", estimator, ("binary",))
        elif not callable(estimator):
            raise validation.type_error("estimator", "'binary' or a callable "
                                        "estimator(masks, outputs, nb_design)",
                                        type(estimator).__name__)
        self.estimator = estimator
        self.estimator_batch_size = None if estimator_batch_size is None else \
            validation.positive_int("estimator_batch_size", estimator_batch_size)
        if self.estimator_batch_size is not None and hasattr(estimator, "set_batch_size"):
            estimator.set_batch_size(self.estimator_batch_size)
        super().__init__(model, batch_size=batch_size,
                         operator=operator, jit_compile=jit_compile, strategy=strategy)

    def _evaluations(self, inputs):
        return self.nb_design

    def _setup(self, inputs, targets, seeds):
        context = self._base_context(inputs)
        if callable(self.sampler):
            d = self._dimension(inputs)
            design = np.asarray(self.sampler(d, self.nb_design), np.float32)
            if design.shape != (self.nb_design, d):
                raise validation.value_error(
                    "sampler", f"a callable returning ({self.nb_design}, {d}) binary masks",
                    f"shape {design.shape}")
            context["table"] = tf.constant(design)
        else:  # every design once, before the sample loop (_finish reads them all too)
            context["designs"] = self._masks(tf.range(self.nb_design), seeds, context,
                                             self._dimension(inputs))
        return context

    def _masks(self, index, seeds, context, d):
        """Binary cell values ``(n, B, d)`` of designs ``index`` (``(n,)``)."""
        if "designs" in context:
            return tf.gather(context["designs"], index)
        if "table" in context:
            rows = tf.gather(context["table"], index)
            return tf.broadcast_to(rows[:, None], tf.stack([tf.shape(index)[0],
                                                            tf.shape(seeds)[0], d]))
        # xplique's np.round: a cell is kept where the coordinate is above 0.5
        return tf.cast(self._points(d, index, seeds) > 0.5, tf.float32)

    def _perturb(self, inputs, seeds, sample, context):
        values = self._masks(sample, seeds, context, self._dimension(inputs))
        return self._apply(inputs, values, context), None

    def _finish(self, inputs, seeds, state, context):
        d, n = self._dimension(inputs), self.nb_design
        scores = tf.transpose(state)  # (B, n)
        masks = tf.transpose(self._masks(tf.range(n), seeds, context, d), [1, 0, 2])  # (B, n, d)
        if isinstance(self.estimator, str):
            block = self.estimator_batch_size or d
            indices = tf.map_fn(
                lambda args: hsic_binary(args[0], args[1], block), (masks, scores),
                fn_output_signature=tf.TensorSpec((d,), tf.float32), parallel_iterations=1)
        else:
            grid = self._grid(inputs)
            indices = tf.map_fn(
                lambda args: tf.reshape(tf.cast(self.estimator(
                    tf.reshape(args[0], (n, *grid, 1)), args[1], n), tf.float32), [d]),
                (masks, scores), fn_output_signature=tf.TensorSpec((d,), tf.float32))
        return self._upsample(inputs, indices)


def hsic_binary(masks: tf.Tensor, scores: tf.Tensor, block: int | None = None) -> tf.Tensor:
    """xplique's binary-kernel HSIC of each cell ``(d,)`` from one image's binary masks
    ``(n, d)`` and scores ``(n,)``: ``tr(K_i H L H) / n`` with ``K_i = 1.5 - (x_i - x_i')^2``
    and ``L`` an RBF kernel of width the scores' median, as ``2 x_i^T (H L H) x_i / n``."""
    n = tf.cast(tf.shape(scores)[0], tf.float32)
    ordered = tf.sort(scores)
    count = tf.shape(scores)[0]
    median = 0.5 * (ordered[(count - 1) // 2] + ordered[count // 2])
    width2 = tf.square(median)
    width2 = tf.where(width2 > 0, width2, 1.0)
    gram = tf.exp(-tf.square(scores[:, None] - scores[None, :]) / (2.0 * width2))
    centred = gram - tf.reduce_mean(gram, 0, keepdims=True)
    centred = centred - tf.reduce_mean(centred, 1, keepdims=True)  # H L H
    d = masks.shape[-1]
    block = d if block is None else block
    parts = []
    for start in range(0, d, block):  # static: d and block are known when tracing
        x = masks[:, start:start + block]
        parts.append(2.0 * tf.reduce_sum(x * tf.matmul(centred, x), 0) / n)
    return tf.concat(parts, 0) if len(parts) > 1 else parts[0]


def box_blur(inputs: tf.Tensor, size: int) -> tf.Tensor:
    """``cv2.blur(x, (size, size))`` per image: the mean over a ``size x size`` window
    anchored at its centre (``size // 2`` before, the rest after), mirrored borders
    (``BORDER_REFLECT_101``)."""
    before, after = size // 2, size - 1 - size // 2
    height, width = inputs.shape[1:3]
    if min(height, width) <= before:
        raise validation.value_error(
            "inputs", f"images of at least {before + 1} x {before + 1} pixels for "
            "perturbation_function='blurring'", f"shape {tuple(inputs.shape)}")
    padded = tf.pad(inputs, [[0, 0], [before, after], [before, after], [0, 0]], mode="REFLECT")
    return tf.nn.avg_pool2d(padded, size, 1, "VALID")
