"""The base classes of the metrics, and the batched engine their kernels share.

A metric is built on the data, ``(model, inputs, targets)``, as in xplique, and called on
maps (:class:`ExplanationMetric`) or on an explainer (:class:`ExplainerMetric`). It is the
shared runner (:class:`saliencekit.commons.runner.Runner`) with a kernel of its own: the
maps travel with the inputs and targets in fixed-size padded batches (the runner's
``extra``), and a perturbation metric builds its perturbed inputs inside the kernel, a
chunk of at most ``batch_size`` of them per forward pass, whatever ``steps`` or
``nb_samples`` (:meth:`BaseAttributionMetric._over_variants`).
"""

from __future__ import annotations

import weakref
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..commons import progress as progress_lib
from ..commons import random, runner, validation

_ACTIVATIONS = {None: None, "softmax": tf.nn.softmax, "sigmoid": tf.nn.sigmoid}


def _check_activation(activation):
    if activation not in _ACTIVATIONS:
        raise validation.value_error("activation", "None, 'softmax' or 'sigmoid'",
                                     repr(activation))
    return activation


def ranks(values: tf.Tensor) -> tf.Tensor:
    """``(B, F)`` -> ``(B, F)`` 0-based ranks along the last axis, ties given the mean of
    the ranks they span (scipy's ``rankdata(method="average") - 1``)."""
    values = tf.convert_to_tensor(values, tf.float32)
    batch, size = tf.shape(values)[0], tf.shape(values)[1]
    order = tf.argsort(values, axis=1, stable=True)
    ordered = tf.gather(values, order, batch_dims=1)
    new = tf.concat([tf.ones((batch, 1), tf.bool), ordered[:, 1:] != ordered[:, :-1]], 1)
    group = tf.cumsum(tf.cast(new, tf.int32), axis=1) - 1  # (B, F) group of each position
    ids = tf.range(batch)[:, None] * size + group
    position = tf.cast(tf.tile(tf.range(size)[None], [batch, 1]), tf.float32)
    mean = tf.math.unsorted_segment_mean(tf.reshape(position, [-1]), tf.reshape(ids, [-1]),
                                         batch * size)
    sorted_ranks = tf.reshape(tf.gather(mean, tf.reshape(ids, [-1])), (batch, size))
    return tf.gather(sorted_ranks, inverse_permutation(order), batch_dims=1)


def inverse_permutation(order: tf.Tensor) -> tf.Tensor:
    """``(B, F)`` row-wise permutations -> their inverses: for ``order`` an argsort, each
    element's place in the sorted row. One linear-time ``invert_permutation`` over the
    rows laid end to end (a second argsort costs as much as the first: 17 ms for 64 rows
    of 4096 on 2 cores, this 0.7 ms)."""
    order = tf.cast(order, tf.int32)
    batch, size = tf.shape(order)[0], tf.shape(order)[1]
    shift = tf.range(batch)[:, None] * size
    flat = tf.math.invert_permutation(tf.reshape(order + shift, [-1]))
    return tf.reshape(flat, (batch, size)) - shift


def order_ranks(values: tf.Tensor, descending: bool = True) -> tf.Tensor:
    """``(B, F)`` -> each feature's 0-based place when its row is sorted (descending by
    default), ties in position order (the first in row-major order goes first)."""
    direction = "DESCENDING" if descending else "ASCENDING"
    return inverse_permutation(tf.argsort(values, axis=1, direction=direction, stable=True))


def pearson(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Row-wise Pearson correlation of ``(B, F)`` tensors; 0 where a row is constant."""
    a = a - tf.reduce_mean(a, 1, keepdims=True)
    b = b - tf.reduce_mean(b, 1, keepdims=True)
    norm = tf.sqrt(tf.reduce_sum(a * a, 1) * tf.reduce_sum(b * b, 1))
    return tf.math.divide_no_nan(tf.reduce_sum(a * b, 1), norm)


def spearman(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Row-wise Spearman rank correlation of ``(B, F)`` tensors (ties averaged, as scipy's
    ``spearmanr``); 0 where a row is constant (scipy gives NaN, xplique then 0)."""
    return pearson(ranks(a), ranks(b))


class BaseAttributionMetric(runner.Runner):
    """Base of every metric built on a model: the data, the operator, the batches.

    Parameters
    ----------
    model : keras.Model or callable
        The model the maps explain; any model the explainers take. Never modified.
    inputs : array, tf.Tensor or tf.data.Dataset
        The inputs ``(N, ...)`` the maps are of, or a batched Dataset of ``x`` or ``(x, y)``
        (streamed at each evaluation, never held in memory).
    targets : array, tf.Tensor or None
        Class ids ``(N,)`` or one-hot ``(N, C)`` (see the operator for other tasks);
        ``None``: the predicted class.
    batch_size : int or None, default 64
        How many inputs, or perturbed copies of inputs, go through the model at once;
        memory is bounded by it whatever ``steps`` or ``nb_samples``. ``None``: a whole
        batch of inputs and all its copies at once.
    operator : str, callable or None, default None (classification)
        The scalar score, as for the explainers.
    activation : None, "softmax" or "sigmoid", default None
        Applied to the model's outputs before the operator (e.g. to score probabilities
        of a model that outputs logits), as in xplique.
    jit_compile, strategy
        As for the explainers (keyword-only).

    Errors in the data (shapes, targets, activation) are raised at construction, before
    any forward pass.
    """

    #: The metric takes a model with one input only (ROAD: images imputed from their
    #: neighbours); perturbation metrics take several.
    _single_input = True

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
        self.activation = _check_activation(activation)
        self._setup_runner(model, batch_size, operator, jit_compile, strategy)
        if self._single_input and self._input_structure is not None:
            raise validation.type_error(
                "model", f"a model with one input ({type(self).__name__} ranks the features "
                "of one input)", f"a model with {len(self._input_structure)} inputs")
        self.inputs = inputs
        self.targets = targets
        # every check of the data now, before any heavy work
        self._data = self._batches(inputs, targets)
        self._sample_shape = self._data.sample_shape

    # -- what kernels call --------------------------------------------------------------
    def _forward(self, inputs):
        outputs = super()._forward(inputs)
        function = _ACTIVATIONS[self.activation]
        return outputs if function is None else tf.nest.map_structure(function, outputs)

    def _over_variants(self, count: int, valid, data: dict, compute, outputs: int = 1):
        """Evaluate ``count`` variants of each of the first ``valid`` rows of a batch, a
        chunk of at most ``batch_size`` (variant, row) pairs per pass, one chunk in flight.

        ``data`` holds per-row tensors ``(B, ...)`` (the inputs under ``"x"``; scalars are
        shared); ``compute(rows, variant, row, start)`` gets them gathered for the chunk's
        pairs (``variant`` and ``row``: ``(P,)`` int64, ``start``: the chunk's first pair,
        pairs being ``variant * valid + row``) and returns a ``(P,)`` tensor or a tuple of
        ``outputs`` of them. Returns each as ``(B, count)``, zeros on padding rows.
        The count of evaluations is exactly ``count * valid``.
        """
        valid = tf.cast(valid, tf.int64)
        first = tf.nest.flatten(data["x"])[0]
        batch = tf.shape(first, out_type=tf.int64)[0]
        total = count * valid
        per_pass = tf.constant(min(self._per_pass, 2**40), tf.int64)
        if self.batch_size is None:
            per_pass = tf.maximum(total, 1)
        chunks = (total + per_pass - 1) // per_pass
        arrays = tuple(tf.TensorArray(tf.float32, size=0, dynamic_size=True,
                                      infer_shape=False) for _ in range(outputs))
        for chunk in tf.range(chunks):
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)  # memory bound
            start = chunk * per_pass
            pair = tf.range(start, tf.minimum(start + per_pass, total))
            variant, row = pair // valid, pair % valid
            # a chunk of every row of one variant (batch_size a multiple of the rows, the
            # usual case) takes the rows as they are: no copy
            whole = (valid == batch) & (tf.size(pair, out_type=tf.int64) == valid)
            rows = tf.cond(
                whole, lambda: data,
                lambda r=row: tf.nest.map_structure(
                    lambda d: d if d.shape.rank == 0 else tf.gather(d, r), data))
            values = compute(rows, variant, row, start)
            values = (values,) if tf.is_tensor(values) else tuple(values)
            arrays = tuple(a.write(tf.cast(chunk, tf.int32), tf.cast(v, tf.float32))
                           for a, v in zip(arrays, values))
        results = []
        for array in arrays:
            flat = tf.reshape(array.concat(), (count, -1))  # (count, valid)
            flat = tf.pad(flat, [[0, 0], [0, batch - valid]])
            results.append(tf.transpose(flat))  # (B, count)
        return results[0] if outputs == 1 else tuple(results)

    def _noise(self, shape, seed, offset, valid, variant, row, stream: int = 0,
               uniform: bool = False):
        """Standard normal noise ``(P, *shape)`` (``uniform``: uniform in ``[-1, 1]``) for
        each pair of :meth:`_over_variants`, keyed by (seed, the row's index in the user's
        data, variant): the same whatever batch the row sits in and whatever
        ``batch_size``. The pairs of a chunk are consecutive: a chunk within one variant
        (the usual case) draws its rows only, else each variant's rows are drawn whole and
        the chunk's run of them sliced out."""

        def draw(first_row, rows, sample):
            return _philox(shape, seed, offset + first_row, rows, sample, stream, uniform)

        first, begin = variant[0], row[0]
        size = tf.size(variant, out_type=tf.int64)
        distinct = variant[-1] - first + 1

        def spanning():
            draws = tf.map_fn(
                lambda v: draw(tf.constant(0, tf.int64), valid, v),
                first + tf.range(distinct, dtype=tf.int64),
                fn_output_signature=tf.TensorSpec((None, *shape), tf.float32))
            return tf.reshape(draws, (-1, *shape))[begin:begin + size]

        return tf.cond(distinct == 1, lambda: draw(begin, size, first), spanning)


def _philox(shape, seed, first_row, rows, sample, stream, uniform):
    """:func:`saliencekit.commons.random.gaussian`, or with ``uniform`` the same keying drawn
    uniform in ``[-1, 1)`` (:func:`~saliencekit.commons.random.uniform`)."""
    draw = random.uniform if uniform else random.gaussian
    return draw(shape, seed, first_row, rows, sample, stream)


class ExplanationMetric(BaseAttributionMetric):
    """Base of the metrics called on maps: ``metric(maps)`` -> a float.

    Maps are ``(N, *S)``, ``(N, *S, 1)`` or ``(N, *S, C)`` for inputs ``(N, *S, C)``
    (images, series: a feature is a position, its channels go together; maps with channels
    are averaged over them, as xplique does), and ``(N, D)`` for tables ``(N, D)``. A
    multi-input model's maps are one per input, in the inputs' structure (a list or dict).
    A subclass writes ``_step(inputs, targets, offset, seed, maps, valid)`` -> ``(B, ...)``
    per-input values, compiled once per shape by the runner.
    """

    #: a seed is drawn at each evaluation unless ``seed`` is set (stochastic metrics)
    _stochastic = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._kernel = self._compile(self._kernel_step)
        self._explainer_kernels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- the public API -----------------------------------------------------------------
    def __call__(self, explanations: Any) -> float:
        """Same as :meth:`evaluate`."""
        return self.evaluate(explanations)

    def evaluate(self, explanations: Any, verbose: str | int = "auto") -> float:
        """The metric over every input: the mean of :meth:`detailed_evaluate`."""
        return self._summary(self.detailed_evaluate(explanations, verbose=verbose))

    def detailed_evaluate(self, explanations: Any, verbose: str | int = "auto") -> np.ndarray:
        """Per-input values ``(N,)`` (or curves ``(N, steps)``), in input order."""
        maps = self._features(explanations)
        flags = np.ones(len(maps), np.float32)
        if self._data.count is not None and len(maps) != self._data.count:
            raise validation.value_error(
                "explanations", f"one map per input ({self._data.count})",
                f"{len(maps)} maps")
        return self._run(self._kernel, self.inputs, self.targets, verbose,
                         extra=(maps, flags)).numpy()

    def evaluate_explainer(self, explainer: Any, verbose: str | int = "auto") -> float:
        """Explain the inputs with ``explainer`` (a saliencekit explainer or any callable
        ``explainer(inputs, targets) -> maps``) and score its maps, batch by batch: the
        maps of one batch are in memory at a time, whatever the number of inputs."""
        return self._summary(self.detailed_evaluate_explainer(explainer, verbose))

    def detailed_evaluate_explainer(self, explainer: Any, verbose: str | int = "auto"):
        """:meth:`detailed_evaluate` of ``explainer``'s maps, explained batch by batch."""
        check_explainer(explainer)
        runner.check_verbose(verbose)
        batches = self._batches(self.inputs, self.targets)
        seed = tf.constant(self._draw_seed(), tf.int64)
        parts = []
        progress = progress_lib.Progress(verbose, batches.batch_count)
        for x, t, offset, valid in batches:
            count = batches.batch_size if valid is None else valid
            given = tf.nest.map_structure(lambda v, c=count: v[:c], x)
            maps = explainer(self._user_inputs(given), None if t is None else t[:count])
            maps = self._features(maps)
            flags = np.zeros(batches.batch_size, np.float32)
            flags[:count] = 1
            if count < batches.batch_size:
                maps = np.concatenate(
                    [maps, np.zeros((batches.batch_size - count, *maps.shape[1:]),
                                    maps.dtype)])
            out = self._kernel(x, t, offset, seed, (tf.constant(maps), tf.constant(flags)))
            parts.append(out[:count].numpy())
            progress.update(count)
        progress.close()
        return np.concatenate(parts)

    # -- helpers --------------------------------------------------------------------------
    def _user_inputs(self, x):
        if not self._channels_first:
            return x
        return tf.nest.map_structure(
            lambda v: tf.transpose(v, [0, v.shape.rank - 1, *range(1, v.shape.rank - 1)]), x)

    def _summary(self, values: np.ndarray) -> float:
        return float(np.mean(values))

    @staticmethod
    def _features_of(shape: tuple) -> tuple:
        """The features of inputs of sample shape ``shape``: positions (their channels go
        together) for images and series, columns for tables."""
        shape = tuple(shape)
        return shape[:-1] if len(shape) >= 2 else shape

    @property
    def _feature_shape(self) -> tuple:
        return self._features_of(self._sample_shape)

    @property
    def _leaf_feature_shapes(self) -> list[tuple]:
        """One feature shape per model input (``tf.nest`` order)."""
        return [self._features_of(s) for s in self._data.sample_shapes]

    def _features(self, explanations: Any) -> np.ndarray:
        """Maps as float32 ``(N, *features)`` (channels averaged), checked. A multi-input
        model's maps (a list, tuple or dict in the inputs' structure, one map per input)
        come back flattened and concatenated, ``(N, F)``, in ``tf.nest`` order."""
        if not self._data.structured:
            return self._leaf_maps(explanations, self._sample_shape)
        leaves = tf.nest.flatten(explanations) if isinstance(
            explanations, (list, tuple, dict)) else [explanations]
        shapes = self._data.sample_shapes
        if len(leaves) != len(shapes):
            raise validation.value_error(
                "explanations", f"one map per model input ({len(shapes)}), in the structure "
                "of the inputs (a list or dict)", f"{len(leaves)} map(s)")
        maps = [self._leaf_maps(m, s) for m, s in zip(leaves, shapes)]
        if len({len(m) for m in maps}) > 1:
            raise validation.value_error("explanations", "as many maps for every input",
                                         f"{[len(m) for m in maps]}")
        return np.concatenate([m.reshape(len(m), -1) for m in maps], axis=1)

    def _leaf_maps(self, explanations: Any, shape: tuple) -> np.ndarray:
        if isinstance(explanations, tf.Tensor):
            maps = explanations.numpy()
        else:
            try:
                maps = np.asarray(explanations)
            except ValueError as error:
                raise validation.type_error("explanations", "an array of maps",
                                            "ragged data") from error
        if maps.dtype.kind not in "biuf":
            raise validation.type_error("explanations", "a numeric array of maps",
                                        f"an array of dtype {maps.dtype}")
        maps = maps.astype(np.float32, copy=False)
        shape = tuple(shape)
        if self._channels_first and maps.ndim == len(shape) + 1 and maps.ndim >= 3:
            maps = np.moveaxis(maps, 1, -1)
        features = self._features_of(shape)
        if maps.ndim >= 1 and tuple(maps.shape[1:]) == features:
            pass
        elif len(shape) >= 2 and maps.ndim == len(shape) + 1 and tuple(
                maps.shape[1:-1]) == features and maps.shape[-1] in (1, shape[-1]):
            maps = maps.mean(axis=-1)
        else:
            channels = f" or (N, {', '.join(map(str, shape))})" if len(shape) >= 2 else ""
            raise validation.value_error(
                "explanations", f"maps of shape (N, {', '.join(map(str, features))})"
                + (f", (N, {', '.join(map(str, features))}, 1)" if len(shape) >= 2 else "")
                + channels + " for these inputs", f"shape {tuple(maps.shape)}")
        if not np.isfinite(maps).all():
            validation.finite_array("explanations", maps)
        return maps

    def _kernel_step(self, inputs, targets, offset, seed, extra):
        maps, flags = extra
        valid = tf.reduce_sum(tf.cast(flags > 0, tf.int64))
        targets = self._resolve_targets(inputs, targets)
        return self._step(inputs, targets, offset, seed, maps, valid)

    def _step(self, inputs, targets, offset, seed, maps, valid):
        raise NotImplementedError

    def __repr__(self) -> str:
        from ..commons import model as inspect_model
        shown = [f"model={inspect_model.model_name(self.model)!r}"]
        for name, value in vars(self).items():
            if name.startswith("_") or name in ("model", "inputs", "targets"):
                continue
            shown.append(f"{name}={getattr(value, '__name__', value)!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


class ExplainerMetric(BaseAttributionMetric):
    """Base of the metrics called on an explainer: ``metric(explainer)`` -> a float.

    ``explainer`` is a saliencekit explainer (its per-batch maths is traced into the
    metric's compiled kernel, so neighbours are explained without leaving the graph) or
    any callable ``explainer(inputs, targets) -> maps`` (xplique's explainers included;
    then called eagerly, chunk by chunk).
    """

    _single_input = False

    def __call__(self, explainer: Any, *args, **kwargs) -> float:
        """Same as :meth:`evaluate`."""
        return self.evaluate(explainer, *args, **kwargs)

    def evaluate(self, explainer: Any, *args, **kwargs) -> float:
        return float(np.mean(self.detailed_evaluate(explainer, *args, **kwargs)))

    def detailed_evaluate(self, explainer: Any, *args, **kwargs) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return ExplanationMetric.__repr__(self)


def check_explainer(explainer: Any):
    if not callable(explainer):
        raise validation.type_error(
            "explainer", "an explainer (a callable explainer(inputs, targets) -> maps)",
            type(explainer).__name__)
    return explainer


def traceable(explainer: Any) -> bool:
    """Whether ``explainer``'s per-batch maths can be traced into a metric's kernel."""
    from ..attributions.base import BlackBoxExplainer
    return isinstance(explainer, BlackBoxExplainer)


def flat_maps(maps: Any) -> tf.Tensor:
    """``(B, F)`` float32 maps, a multi-input model's maps concatenated."""
    leaves = [tf.cast(m, tf.float32) for m in tf.nest.flatten(maps)]
    flat = [tf.reshape(m, (tf.shape(m)[0], -1)) for m in leaves]
    return flat[0] if len(flat) == 1 else tf.concat(flat, axis=1)


def keras_layers_with_weights(model: Any) -> list:
    """Leaf layers holding trainable weights, in the model's (topological) order, nested
    models flattened."""
    found = []

    def walk(layer):
        if isinstance(layer, keras.Model):
            for child in layer.layers:
                walk(child)
        elif layer.trainable_weights:
            found.append(layer)

    walk(model)
    return found

