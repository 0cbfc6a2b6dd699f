"""LIME and Kernel SHAP: a linear model fitted on perturbed interpretable samples."""

from __future__ import annotations

import copy
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..commons import data, linear, sampling, validation
from .sampled import SampledExplainer


class Lime(SampledExplainer):
    """LIME: the coefficients of a weighted linear model of the score on which
    interpretable features (superpixels, cells, features) are kept.

    Ribeiro, Singh & Guestrin (2016), *"Why Should I Trust You?": Explaining the
    Predictions of Any Classifier*, https://arxiv.org/abs/1602.04938

    Parameters
    ----------
    model, batch_size, operator, jit_compile, strategy
        As in :class:`~saliencekit.attributions.BlackBoxExplainer`. ``batch_size`` counts
        perturbed copies per forward pass; ``None`` (the default, as in xplique) puts the
        ``nb_samples`` copies of one input in one pass.
    interpretable_model : default ``Ridge(alpha=2.0)``
        A :class:`saliencekit.commons.linear.Ridge` or ``LinearRegression``, fitted in
        closed form inside the compiled kernel from statistics accumulated online (memory
        does not grow with ``nb_samples``); or any object with ``fit(z, y,
        sample_weight)``, ``predict`` and, once fitted, ``coef_`` (scikit-learn's
        estimators), fitted on the host on a copy, once per input, on every sample (held
        in memory: ``nb_samples x features`` numbers per input; not with ``jit_compile``).
    similarity_kernel : callable or None
        ``similarity_kernel(input, interpretable_samples, perturbed_samples) -> (n,)``
        for one input, TensorFlow ops (called inside the kernel). ``None``:
        ``exp(-d^2 / kernel_width^2)`` with ``d`` the ``distance_mode`` distance between
        the input and each perturbed copy.
    pertub_func : callable or None
        ``pertub_func(num_features, nb_samples) -> (nb_samples, num_features)`` binary
        interpretable samples, TensorFlow ops, called once per input (its randomness is its
        own: ``seed`` does not reach it). ``None``: each feature kept with probability
        ``prob``, drawn from ``(seed, input index, sample index)``.
    map_to_interpret_space : callable, array or None
        The interpretable features: integer ids ``0..M-1`` for each position, of shape
        ``(H, W)`` for images, ``(T,)`` for series, ``(D,)`` for tables (the channels of a
        position share its feature). A callable takes
        one input and returns its ids with TensorFlow ops (called inside the kernel; wrap a
        numpy segmentation in ``tf.numpy_function``); an array gives one mapping for every
        input, or ``(N, ...)`` one per input, picked by the input's index. ``None``: a grid
        of ``grid_size`` cells for images (xplique uses scikit-image's quickshift
        superpixels, which saliencekit does not depend on), every time step for series
        (xplique: every (step, channel) element) and every feature for tables.
    ref_value : float, array or None
        What a feature is set to when its interpretable feature is off: a number or one
        value per channel. ``None``: 0.5 for 3-channel images (a grey pixel), else 0.
    nb_samples : int, default 150
        Perturbed copies per input.
    distance_mode : {"euclidean", "cosine"}, default "euclidean"
    kernel_width : float, default 45.0
    prob : float, default 0.5
        Probability that the default ``pertub_func`` keeps a feature.
    grid_size : int or tuple, default 8
        The default interpretable space of images: a ``grid_size x grid_size`` grid.
    seed : int or None, default None
        Makes runs repeat; ``None`` draws fresh samples at every call.

    Maps are the coefficients, each spread over its feature's positions: ``(N, H, W, 1)``
    for images, ``(N, T, 1)`` for series and ``(N, D)`` for tables.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import Lime
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
    ...                           keras.layers.GlobalAveragePooling2D()])
    >>> maps = Lime(model, nb_samples=32, grid_size=4, seed=0)(np.ones((2, 8, 8, 3)), [0, 1])
    >>> tuple(maps.shape)
    (2, 8, 8, 1)
    """

    _perturbed_by = "ref_value"

    def __init__(
        self,
        model: keras.Model,
        batch_size: int | None = None,
        operator: Any = None,
        interpretable_model: Any = linear.Ridge(alpha=2.0),  # noqa: B008 (never mutated)
        similarity_kernel: Any = None,
        pertub_func: Any = None,
        map_to_interpret_space: Any = None,
        ref_value: Any = None,
        nb_samples: int = 150,
        distance_mode: str = "euclidean",
        kernel_width: float = 45.0,
        prob: float = 0.5,
        *,
        grid_size: int | tuple[int, int] = 8,
        seed: int | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.nb_samples = validation.positive_int("nb_samples", nb_samples)
        self._set_interpretable_model(interpretable_model, jit_compile)
        for name, value in (("similarity_kernel", similarity_kernel),
                            ("pertub_func", pertub_func)):
            if value is not None and not callable(value):
                raise validation.type_error(name, "None or a callable", type(value).__name__)
        self.similarity_kernel = self._similarity = similarity_kernel
        self.pertub_func = self._pertub = pertub_func
        self.map_to_interpret_space = map_to_interpret_space
        self._mapping = _check_mapping(map_to_interpret_space)
        self.ref_value = ref_value
        self._ref = None if ref_value is None else _check_ref(ref_value)
        self.distance_mode = validation.one_of("distance_mode", distance_mode,
                                               ("euclidean", "cosine"))
        self.kernel_width = validation.non_negative_float("kernel_width", kernel_width)
        if self.kernel_width == 0:
            raise validation.value_error("kernel_width", "a number > 0", kernel_width)
        self.prob = _probability("prob", prob)
        self.grid_size = validation.int_tuple("grid_size", grid_size, 2)
        self._set_seed(seed)
        super().__init__(model, batch_size=batch_size,
                         operator=operator, jit_compile=jit_compile, strategy=strategy)

    #: whether samples are weighted by their similarity to the input (Kernel SHAP's are not)
    _weighted_by_similarity = True

    def _set_interpretable_model(self, interpretable_model, jit_compile):
        if not all(callable(getattr(interpretable_model, a, None)) for a in ("fit", "predict")):
            raise validation.type_error(
                "interpretable_model", "an object with fit and predict methods (a "
                "saliencekit.commons.linear.Ridge, or a scikit-learn linear model)",
                type(interpretable_model).__name__)
        self.interpretable_model = interpretable_model
        self._in_kernel = isinstance(interpretable_model, linear.Ridge)
        if not self._in_kernel and jit_compile:
            raise validation.value_error(
                "jit_compile", "False with an interpretable_model fitted on the host "
                f"({type(interpretable_model).__name__})", True,
                "Use saliencekit.commons.linear.Ridge to fit inside the compiled kernel.")

    # -- the interpretable space -------------------------------------------------------------
    @staticmethod
    def _space_shape(inputs) -> tuple[int, ...]:
        rank = inputs.shape.rank
        if rank in (3, 4):  # channels share their position's feature
            return tuple(inputs.shape[1:-1])
        if rank == 2:
            return tuple(inputs.shape[1:])
        raise validation.value_error(
            "inputs", "tables (N, D), series (N, T, C) or images (N, H, W, C)",
            f"shape {tuple(inputs.shape)}")

    def _setup(self, inputs, targets, seeds):
        space = self._space_shape(inputs)
        rows = seeds[:, 0]
        mapping = self._mapping
        if callable(mapping):
            ids = tf.map_fn(lambda x: tf.cast(mapping(x), tf.int32), inputs,
                            fn_output_signature=tf.TensorSpec(space, tf.int32))
            features = tf.reduce_max(ids) + 1
            present = tf.range(features)[None] <= tf.reduce_max(
                tf.reshape(ids, (tf.shape(ids)[0], -1)), 1)[:, None]
        else:
            if mapping is None:
                if inputs.shape.rank == 4:
                    grid = tuple(min(g, s) for g, s in zip(self.grid_size, space))
                    mapping = sampling.cell_map(space, grid)
                else:
                    mapping = np.arange(int(np.prod(space)), dtype=np.int32).reshape(space)
            if mapping.shape[-len(space):] != space or mapping.ndim not in (len(space),
                                                                            len(space) + 1):
                raise validation.value_error(
                    "map_to_interpret_space", f"ids of shape {space} (or (N, *{space}))",
                    f"an array of shape {mapping.shape}")
            features = int(mapping.max()) + 1
            table = tf.constant(mapping)
            if mapping.ndim == len(space):
                ids = tf.broadcast_to(table, tf.concat([tf.shape(rows), space], 0))
                present = tf.ones(tf.stack([tf.shape(rows)[0], features]), tf.bool)
            else:
                index = tf.minimum(rows, mapping.shape[0] - 1)  # padding rows: any mapping
                ids = tf.gather(table, index)
                present = tf.range(features)[None] <= tf.reduce_max(
                    tf.reshape(ids, (tf.shape(ids)[0], -1)), 1)[:, None]
        ref = self._ref
        if ref is None:
            ref = 0.5 if inputs.shape.rank == 4 and inputs.shape[-1] == 3 else 0.0
        if inputs.shape.rank >= 3:  # a number or one value per channel
            ref = tf.broadcast_to(tf.cast(ref, tf.float32), inputs.shape[-1:])
        ref = tf.cast(ref, tf.float32)
        ids = tf.reshape(ids, (tf.shape(ids)[0], -1))
        # hoisted out of the sample loop: a copy is ref + m * (x - ref), one multiply-add
        # per chunk; and its squared distance to x, sum over positions of (1 - m)^2 times
        # the position's sum over channels of (x - ref)^2, is per feature g
        # sum_g (1 - z_g)^2 E_g with E_g that sum over g's positions, computed once here
        offset = inputs - ref
        context = {"inputs": inputs, "ids": ids, "features": features,
                   "present": tf.cast(present, tf.float32), "ref": ref, "offset": offset}
        if (self._weighted_by_similarity and self._similarity is None
                and self.distance_mode == "euclidean"):
            energy = tf.square(offset)
            if inputs.shape.rank >= 3:
                energy = tf.reduce_sum(energy, -1)
            energy = tf.reshape(energy, tf.shape(ids))
            rows_in_batch = tf.shape(ids)[0]
            segments = ids + features * tf.range(rows_in_batch)[:, None]
            context["energy"] = tf.reshape(tf.math.unsorted_segment_sum(
                energy, segments, rows_in_batch * features), tf.stack([rows_in_batch, features]))
        if self._pertub is not None:
            context["designs"] = tf.map_fn(  # (B, n, M), one call per input, as xplique
                lambda _: tf.cast(self._pertub(features, self.nb_samples), tf.float32),
                rows, fn_output_signature=tf.TensorSpec((self.nb_samples, None), tf.float32))
        return context

    # -- sampling ------------------------------------------------------------------------------
    def _evaluations(self, inputs):
        return self.nb_samples

    def _interpretable(self, seeds, sample, context):
        """Interpretable samples ``(copies, B, M)`` in {0, 1}."""
        if "designs" in context:
            return tf.transpose(tf.gather(context["designs"], sample, axis=1), [1, 0, 2])
        draw = sampling.uniform(seeds[0, 1], seeds[:, 0], sample, [context["features"]])
        return tf.cast(draw < self.prob, tf.float32)

    def _perturb(self, inputs, seeds, sample, context):
        z = self._interpretable(seeds, sample, context) * context["present"][None]
        masks = tf.gather(tf.transpose(z, [1, 0, 2]), context["ids"], axis=2, batch_dims=1)
        masks = tf.transpose(masks, [1, 0, 2])  # (copies, B, positions)
        space = self._space_shape(inputs)
        masks = tf.reshape(masks, tf.concat([tf.shape(z)[:2], space], 0))
        if inputs.shape.rank >= 3:
            masks = masks[..., None]
        perturbed = context["offset"][None] * masks + context["ref"]
        return perturbed, (z, perturbed)

    def _similarities(self, inputs, z, perturbed, context=None):
        """``(copies, B)`` sample weights."""
        if context is not None and "energy" in context:  # euclidean, from the features
            distance2 = tf.reduce_sum(tf.square(1.0 - z) * context["energy"][None], -1)
            return tf.exp(-distance2 / self.kernel_width**2)
        if self._similarity is not None:
            def one(args):
                x, zi, pi = args
                return tf.cast(tf.reshape(self._similarity(x, zi, pi), [-1]), tf.float32)
            per_input = tf.map_fn(one, (inputs, tf.transpose(z, [1, 0, 2]),
                                        tf.experimental.numpy.swapaxes(perturbed, 0, 1)),
                                  fn_output_signature=tf.TensorSpec((None,), tf.float32))
            return tf.transpose(per_input)
        batch = tf.shape(inputs)[0]
        flat_x = tf.reshape(inputs, tf.stack([batch, -1]))[None]  # (1, B, E)
        flat_p = tf.reshape(perturbed, tf.stack([tf.shape(perturbed)[0], batch, -1]))
        if self.distance_mode == "euclidean":
            distance2 = tf.reduce_sum(tf.square(flat_x - flat_p), -1)
        else:  # 1 - cosine similarity
            cosine = tf.math.divide_no_nan(tf.reduce_sum(flat_x * flat_p, -1),
                                           tf.norm(flat_x, axis=-1) * tf.norm(flat_p, axis=-1))
            distance2 = tf.square(1.0 - cosine)
        return tf.exp(-distance2 / self.kernel_width**2)

    # -- fitting -----------------------------------------------------------------------------
    def _initial(self, inputs, context):
        if self._in_kernel:
            return self._initial_statistics(inputs, context)
        return tuple(tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
                     for _ in range(3))

    def _update(self, state, index, sample, valid, aux, scores, context):
        z, perturbed = aux
        weights = self._similarities(context["inputs"], z, perturbed, context)
        weights = weights * tf.cast(valid, tf.float32)[:, None]
        if self._in_kernel:
            return self._accumulate(state, index, z, scores, weights)
        i = tf.cast(index, tf.int32)
        return state[0].write(i, z), state[1].write(i, scores), state[2].write(i, weights)

    # -- the regression's statistics, accumulated in blocks of chunks ---------------------------
    #: Chunks of samples buffered before one update of the ``(B, M+1, M+1)`` Gram matrices:
    #: adding a chunk's outer products to them reads and writes every entry, which costs more
    #: than a small model's forward pass when a chunk is one copy of each input; one matmul
    #: per block of chunks amortises that traffic.
    GRAM_BLOCK = 8

    def _initial_statistics(self, inputs, context):
        """``(G, h, z buffer, w buffer)``: the Gram matrices ``(B, M+1, M+1)`` (float32) and
        moments ``(B, M+1)`` (float64) of the weighted regression, and the samples and
        weights of up to :attr:`GRAM_BLOCK` chunks not yet in ``G``, ``(block, copies, B, M)``
        and ``(block, copies, B)``: ``GRAM_BLOCK`` times a pass's ``copies x B`` (at most
        ``batch_size``, or one copy of each input) rows of ``M`` numbers."""
        size = context["features"] + 1
        batch = tf.shape(inputs)[0]
        copies = self._copies(inputs)
        chunks = -(-tf.cast(self._evaluations(inputs), tf.int64) // copies)
        block = tf.minimum(tf.constant(self.GRAM_BLOCK, tf.int64), chunks)
        buffered = tf.stack([tf.cast(block, tf.int32), tf.cast(copies, tf.int32), batch])
        return (tf.zeros(tf.stack([batch, size, size]), tf.float32),
                tf.zeros(tf.stack([batch, size]), tf.float64),
                tf.zeros(tf.concat([buffered, [size - 1]], 0), tf.float32),
                tf.zeros(buffered, tf.float32))

    def _accumulate(self, state, index, z, scores, weights):
        """Add a chunk's samples ``z`` ``(copies, B, M)``, ``scores`` and ``weights``: the
        moments at once, the Gram matrices once a block of chunks is buffered."""
        gram, moment, zs, ws = state
        moment += linear.moment(z, scores, weights)
        block = tf.shape(zs, out_type=tf.int64)[0]
        slot = [[index % block]]
        zs = tf.tensor_scatter_nd_update(zs, slot, z[None])
        ws = tf.tensor_scatter_nd_update(ws, slot, weights[None])
        full = tf.equal(index % block, block - 1)
        gram, ws = tf.cond(full, lambda: (gram + _gram(zs, ws), tf.zeros_like(ws)),
                           lambda: (gram, ws))
        return gram, moment, zs, ws

    @staticmethod
    def _statistics(state):
        """The final ``(G, h)``: the chunks still buffered added (the weights of those
        already added are zeros)."""
        gram, moment, zs, ws = state[:4]
        return gram + _gram(zs, ws), moment

    def _check_weights(self, total_weight):
        """Every similarity underflowing to 0 leaves nothing to fit: fail loudly (the base
        turns this check into a ValueError), never return zeros."""
        return tf.debugging.assert_positive(total_weight, message=data.PIPELINE_CHECK + (
            validation.message(
                "kernel_width", "a width at the scale of the distances between an input and "
                f"its perturbed copies (every similarity exp(-d^2 / {self.kernel_width}^2) "
                "underflowed to 0 for an input)", self.kernel_width,
                "Scale kernel_width with the inputs' range and size, or pass a "
                "similarity_kernel.")))

    def _finish(self, inputs, seeds, state, context):
        if self._in_kernel:
            gram, moment = self._statistics(state)
            with tf.control_dependencies([self._check_weights(gram[:, -1, -1])]):
                coef, _ = self.interpretable_model.solve(gram, moment)
        else:
            z, y, w = (array.concat() for array in state)  # (chunks * copies, B, ...)
            with tf.control_dependencies([self._check_weights(tf.reduce_sum(w, 0))]):
                w = tf.identity(w)
            coef = tf.numpy_function(self._host_fit, [z[:self.nb_samples], y[:self.nb_samples],
                                                      w[:self.nb_samples]], tf.float32)
            coef = tf.reshape(coef, tf.shape(z)[1:])
        return self._spread(inputs, coef, context)

    def _host_fit(self, z, y, w):
        coefs = []
        for b in range(z.shape[1]):
            model = copy.deepcopy(self.interpretable_model)
            model.fit(z[:, b], y[:, b], sample_weight=w[:, b])
            coefs.append(np.asarray(model.coef_, np.float32).reshape(-1)[:z.shape[2]])
        return np.stack(coefs).astype(np.float32)

    def _spread(self, inputs, coef, context):
        maps = tf.gather(coef, context["ids"], axis=1, batch_dims=1)
        return tf.reshape(maps, tf.concat([tf.shape(inputs)[:1], self._space_shape(inputs)], 0))


def _ranks(keys: tf.Tensor) -> tf.Tensor:
    """Each key's rank along the last axis (``argsort(argsort(keys))``) with one sort: the
    sort orders of every row, offset by the row's start, are one permutation of all the
    positions, whose inverse (a scatter, no second sort) gives the ranks."""
    order = tf.argsort(keys, -1)
    size = tf.shape(keys)[-1]
    starts = tf.reshape(tf.range(tf.size(keys) // size) * size, tf.shape(keys[..., :1]))
    inverse = tf.math.invert_permutation(tf.reshape(order + starts, [-1]))
    return tf.reshape(inverse, tf.shape(keys)) - starts


def _gram(zs: tf.Tensor, ws: tf.Tensor) -> tf.Tensor:
    """``sum w z~ z~^T`` ``(B, M+1, M+1)`` of buffered samples ``zs`` ``(..., B, M)`` and
    weights ``ws`` ``(..., B)`` (``z~ = [z, 1]``): one batched matmul."""
    batch, features = tf.shape(zs)[-2], tf.shape(zs)[-1]
    z = tf.transpose(tf.reshape(zs, tf.stack([-1, batch, features])), [1, 0, 2])  # (B, n, M)
    w = tf.transpose(tf.reshape(ws, tf.stack([-1, batch])))  # (B, n)
    augmented = tf.concat([z, tf.ones_like(z[..., :1])], -1)
    return tf.matmul(augmented * w[..., None], augmented, transpose_a=True)


def _check_mapping(mapping):
    if mapping is None or callable(mapping):
        return mapping
    try:
        array = np.asarray(mapping)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "iu" or array.size == 0 or array.min() < 0:
        raise validation.type_error(
            "map_to_interpret_space", "None, a callable or an array of non-negative integer "
            "ids", type(mapping).__name__)
    return array.astype(np.int32)


def _check_ref(ref):
    array = np.asarray(ref, np.float32)
    validation.finite_array("ref_value", array)
    return tf.constant(array.reshape(-1) if array.size > 1 else array.reshape(()))


def _probability(argument, value) -> float:
    value = validation.non_negative_float(argument, value)
    if value > 1:
        raise validation.value_error(argument, "a number in [0, 1]", value)
    return value


class KernelShap(Lime):
    """Kernel SHAP: Shapley values of interpretable features by weighted least squares.

    Lundberg & Lee (2017), *A Unified Approach to Interpreting Model Predictions*,
    https://arxiv.org/abs/1705.07874

    Parameters
    ----------
    model, batch_size, operator, jit_compile, strategy
        As in :class:`~saliencekit.attributions.BlackBoxExplainer`.
    map_to_interpret_space, ref_value, grid_size, seed
        As in :class:`Lime`. A feature that is off takes ``ref_value`` (the baseline).
    nb_samples : int, default 800
        Model evaluations per input: the full and the empty coalition, then coalitions
        drawn from the Shapley kernel.

    Coalitions of ``k`` of the ``M`` features are drawn with probability proportional to
    ``(M - 1) / (k (M - k))``, uniformly among those of size ``k``, so that unweighted
    least squares on them is the Shapley-kernel regression (the captum / xplique trick);
    each drawn coalition is followed by its complement (paired sampling, as the ``shap``
    library), which cancels the estimator's odd-order error. The regression is solved
    under the efficiency constraint: the empty coalition's score is the intercept and the
    values add up to ``f(x) - f(x0)`` exactly (the kernel's infinite weights on the empty
    and full coalitions, as in the paper; xplique fits an unconstrained
    ``LinearRegression``). For a model that is linear in the features, the values are the
    exact Shapley values ``w_g . (x - x0)_g``.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import KernelShap
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
    ...                           keras.layers.GlobalAveragePooling2D()])
    >>> shap = KernelShap(model, nb_samples=64, grid_size=4, seed=0)
    >>> tuple(shap(np.ones((2, 8, 8, 3)), [0, 1]).shape)
    (2, 8, 8, 1)
    """

    def __init__(
        self,
        model: keras.Model,
        batch_size: int | None = 64,
        operator: Any = None,
        map_to_interpret_space: Any = None,
        nb_samples: int = 800,
        ref_value: Any = None,
        *,
        grid_size: int | tuple[int, int] = 8,
        seed: int | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        super().__init__(model, batch_size=batch_size, operator=operator,
                         interpretable_model=linear.LinearRegression(),
                         map_to_interpret_space=map_to_interpret_space, ref_value=ref_value,
                         nb_samples=nb_samples, grid_size=grid_size, seed=seed,
                         jit_compile=jit_compile, strategy=strategy)
        # what Lime's signature adds and Kernel SHAP fixes: not settings of this explainer
        for name in ("interpretable_model", "similarity_kernel", "pertub_func",
                     "distance_mode", "kernel_width", "prob"):
            delattr(self, name)

    _weighted_by_similarity = False

    def _setup(self, inputs, targets, seeds):
        context = super()._setup(inputs, targets, seeds)
        return {**context, **self._coalition_sizes(context["present"])}

    @staticmethod
    def _coalition_sizes(present: tf.Tensor) -> dict:
        """The distribution of coalition sizes ``k`` in ``1..M-1``, ``p(k)`` proportional to
        ``(M - 1) / (k (M - k))``, for each input's ``M`` present features ``(B, M)``: its
        CDF ``(B, K)`` and the largest size ``(B,)``, once per batch."""
        features = tf.reduce_sum(present, -1, keepdims=True)  # (B, 1): each input's M
        k = tf.cast(tf.range(1, tf.maximum(tf.shape(present)[-1], 2)), tf.float32)  # (K,)
        weight = tf.where(k < features, 1.0 / (k * tf.maximum(features - k, 1.0)), 0.0)
        return {"size_cdf": tf.math.divide_no_nan(tf.cumsum(weight, -1),
                                                  tf.reduce_sum(weight, -1, keepdims=True)),
                "largest": tf.maximum(features[:, 0] - 1.0, 0.0)}

    def _interpretable(self, seeds, sample, context):
        present = context["present"][None]  # (1, B, M)
        pair = tf.maximum(sample - 2, 0) // 2
        size = tf.shape(present)[-1]
        seed, rows = seeds[0, 1], seeds[:, 0]
        u = sampling.uniform(seed, rows, pair, [1], stream=3)  # (copies, B, 1)
        chosen = tf.reduce_sum(tf.cast(context["size_cdf"][None] < u, tf.float32), -1) + 1.0
        chosen = tf.minimum(chosen, context["largest"][None])  # (copies, B)
        # which k: the k smallest of uniform keys among the present features
        keys = sampling.uniform(seed, rows, pair, [size], stream=4)
        keys = tf.where(present > 0, keys, 2.0)
        ranks = _ranks(keys)
        z = tf.cast(tf.cast(ranks, tf.float32) < chosen[..., None], tf.float32)
        odd = tf.reshape(tf.cast((sample - 2) % 2 == 1, tf.float32), [-1, 1, 1])
        z = z + odd * (present - 2.0 * z)  # the complement of the previous coalition
        endpoint = tf.reshape(tf.cast(sample, tf.float32), [-1, 1, 1])
        full, empty = tf.cast(endpoint == 0, tf.float32), tf.cast(endpoint == 1, tf.float32)
        return (1.0 - full - empty) * z + full * present

    def _initial(self, inputs, context):
        batch = tf.shape(inputs)[0]
        # Gram matrices of 0/1 samples with weights 0/1: counts, exact in float32
        return (*self._initial_statistics(inputs, context),
                tf.zeros(tf.stack([batch]), tf.float32), tf.zeros(tf.stack([batch]), tf.float32))

    def _update(self, state, index, sample, valid, aux, scores, context):
        z, _ = aux
        full, empty = state[4:]
        drawn = tf.cast(valid & (sample >= 2), tf.float32)[:, None] * tf.ones_like(scores)
        full += tf.reduce_sum(scores * tf.cast((sample == 0) & valid, tf.float32)[:, None], 0)
        empty += tf.reduce_sum(scores * tf.cast((sample == 1) & valid, tf.float32)[:, None], 0)
        return (*self._accumulate(state[:4], index, z, scores, drawn), full, empty)

    def _finish(self, inputs, seeds, state, context):
        gram, moment = self._statistics(state)
        full, empty = state[4:]
        # the intercept is the empty coalition's score: regress y - f(x0) on z alone
        moment = moment[:, :-1] - tf.cast(empty, tf.float64)[:, None] * tf.cast(
            gram[:, :-1, -1], tf.float64)
        values = linear.constrained_solve(gram[:, :-1, :-1], moment, full - empty,
                                          context["present"])
        return self._spread(inputs, values, context)
