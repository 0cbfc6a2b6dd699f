"""Robustness: do close inputs get close maps?

Both metrics explain ``nb_samples`` neighbours of each input inside one compiled kernel: a
saliencekit explainer's per-batch maths is traced into it (so a chunk of at most
``batch_size`` neighbours is explained per pass, memory bounded whatever ``nb_samples``);
any other callable explainer (xplique's) is called eagerly on the same chunks.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import tensorflow as tf

from ..commons import runner, validation
from .base import ExplainerMetric, check_explainer, flat_maps, traceable

_DISTANCES = {
    "l1": lambda a, b: tf.reduce_sum(tf.abs(a - b), axis=1),
    "l2": lambda a, b: tf.norm(a - b, axis=1),
}


def _check_distance(distance):
    if callable(distance) or distance in _DISTANCES:
        return distance
    raise validation.value_error("distance", "'l1', 'l2' or a callable distance(a, b)",
                                 repr(distance))


class _Neighbourhood(ExplainerMetric):
    """Explain ``nb_samples`` neighbours ``x + radius * u`` of each input, ``u`` uniform in
    ``[-1, 1]`` per value (an L-infinity ball), drawn in the kernel keyed by ``(seed, input
    index, sample)``; a subclass reduces the distances to the input's own map."""

    _stochastic = True

    def __init__(
        self,
        model: Any,
        inputs: Any,
        targets: Any = None,
        batch_size: int | None = 64,
        radius: float = 0.1,
        distance: str | Any = "l2",
        nb_samples: int = 200,
        *,
        seed: int | None = None,
        operator: Any = None,
        activation: str | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.radius = validation.non_negative_float("radius", radius)
        self.distance = _check_distance(distance)
        self.nb_samples = validation.positive_int("nb_samples", nb_samples)
        self.seed = validation.optional_seed("seed", seed)
        super().__init__(model, inputs, targets, batch_size, operator, activation,
                         jit_compile=jit_compile, strategy=strategy)
        self._kernels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _distance(self, a, b):
        if callable(self.distance):
            return tf.cast(tf.convert_to_tensor(self.distance(a, b)), tf.float32)
        return _DISTANCES[self.distance](a, b)

    def _reduce(self, distances, base):
        raise NotImplementedError

    def detailed_evaluate(self, explainer: Any, base_explanations: Any = None,
                          verbose: str | int = "auto") -> np.ndarray:
        """Per-input values ``(N,)``. ``base_explanations``: the inputs' own maps, if
        already computed (else explained in the kernel)."""
        check_explainer(explainer)
        runner.check_verbose(verbose)
        compiled = traceable(explainer)
        if compiled:
            if explainer not in self._kernels:
                ref = weakref.ref(explainer)  # the cache does not keep the explainer alive
                self._kernels[explainer] = self._compile(
                    lambda *args: self._kernel_step(ref(), True, *args))
            kernel = self._kernels[explainer]
        else:
            kernel = lambda *args: self._kernel_step(explainer, False, *args)  # noqa: E731
        count = self._data.count
        extra = {}
        if count is not None:  # padding rows are not explained (a Dataset's count is unknown)
            extra["flags"] = np.ones(count, np.float32)
        if base_explanations is not None:
            base = np.asarray(base_explanations.numpy() if hasattr(
                base_explanations, "numpy") else base_explanations, np.float32)
            if count is not None and len(base) != count:
                raise validation.value_error("base_explanations",
                                             f"one map per input ({count})", f"{len(base)} maps")
            extra["base"] = base.reshape(len(base), -1)
        return self._run(kernel, self.inputs, self.targets, verbose,
                         extra=extra or None).numpy()

    def evaluate(self, explainer: Any, base_explanations: Any = None,
                 verbose: str | int = "auto") -> float:
        return float(np.mean(self.detailed_evaluate(explainer, base_explanations, verbose)))

    def _kernel_step(self, explainer, compiled, inputs, targets, offset, seed, extra=None):
        extra = extra or {}
        base = extra.get("base")
        targets = self._resolve_targets(inputs, targets)
        nb = self.nb_samples

        def explain(x, t, first_index):
            if compiled:  # traced into this kernel; its noise keyed by neighbour index
                return flat_maps(explainer._explain_step(x, t, first_index, seed))
            return flat_maps(tf.convert_to_tensor(explainer(x, t)))

        if base is None:
            base = explain(inputs, targets, offset * (nb + 1))
        base = flat_maps(base)
        valid = tf.shape(base, out_type=tf.int64)[0]
        if "flags" in extra:
            valid = tf.reduce_sum(tf.cast(extra["flags"] > 0, tf.int64))
        leaves = tf.nest.flatten(inputs)

        def compute(rows, variant, row, start):
            x = tf.nest.flatten(rows["x"])
            noisy = []
            for leaf, value in enumerate(x):
                uniform = self._noise(tuple(value.shape[1:]), seed, offset, valid, variant,
                                      row, stream=leaf, uniform=True)
                noisy.append(value + self.radius * uniform)
            neighbours = tf.nest.pack_sequence_as(rows["x"], noisy)
            maps = explain(neighbours, rows.get("t"), offset * (nb + 1) + start + 1)
            return self._distance(maps, rows["base"]), tf.norm(rows["base"], axis=1)

        data = {"x": tf.nest.pack_sequence_as(inputs, leaves), "base": base}
        if targets is not None:
            data["t"] = targets
        distances, norms = self._over_variants(nb, valid, data, compute, outputs=2)
        return self._reduce(distances, norms)


class AverageStability(_Neighbourhood):
    """Average stability, or average sensitivity (Bhatt et al. 2020, *Evaluating and
    Aggregating Feature-based Model Explanations*, https://arxiv.org/abs/2005.00631, def.
    2): the mean distance between an input's map and its neighbours' maps. Lower is
    better.

    Parameters
    ----------
    model, inputs, targets, batch_size
        See :class:`~saliencekit.metrics.base.BaseAttributionMetric` (multi-input models
        too: each input gets its own noise).
    radius : float, default 0.1
        Neighbours are ``x + radius * u``, ``u`` uniform in ``[-1, 1]`` per value.
    distance : "l1", "l2" or callable, default "l2"
        Between flattened maps ``(B, F)``: ``"l1"`` the sum of absolute differences,
        ``"l2"`` the Euclidean norm of the difference (xplique's definitions); a callable
        takes two ``(B, F)`` tensors and returns ``(B,)``.
    nb_samples : int, default 200
        Neighbours per input.
    seed : int or None (keyword-only)
        Neighbours (and a stochastic explainer's noise) are keyed by ``(seed, input index,
        neighbour)``: a seed repeats a run exactly, whatever ``batch_size``.
    operator, activation (keyword-only)
        For ``targets=None`` (the predicted class); the explainer keeps its own operator.

    ``evaluate(explainer, base_explanations=None)``, as xplique's. The difference:
    xplique 2.0's neighbours are ``x + u``, ``u`` uniform in ``[0, radius)`` (one-sided:
    the neighbourhood is centred on ``x + radius / 2``), the same ``nb_samples`` draws for
    every input, from TensorFlow's global generator; here they are centred on ``x``, as
    Bhatt et al. define them, and drawn per input (seeded).
    """

    def _reduce(self, distances, norms):
        return tf.reduce_mean(distances, axis=1)


class MaxSensitivity(_Neighbourhood):
    """Max-sensitivity (Yeh et al. 2019, *On the (In)fidelity and Sensitivity of
    Explanations*, https://arxiv.org/abs/1901.09392): the largest change of an input's
    map over its neighbours, relative to the map's norm (as Quantus normalises it),
    ``max_j ||phi(x + d_j) - phi(x)|| / ||phi(x)||``. Lower is better.

    Parameters are those of :class:`AverageStability`. A map of norm 0 gives 0 if its
    neighbours' are 0 too, else Inf.
    """

    def _reduce(self, distances, norms):
        return tf.math.divide_no_nan(tf.reduce_max(distances, 1), norms[:, 0]) + tf.where(
            (norms[:, 0] == 0) & (tf.reduce_max(distances, 1) > 0), np.inf, 0.0)
