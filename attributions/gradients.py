"""Gradient methods: Saliency, GradientInput, IntegratedGradients and the noisy family
(SmoothGrad, SquareGrad, VarGrad)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..commons import batch_ops, random, validation
from .base import WhiteBoxExplainer


class Saliency(WhiteBoxExplainer):
    """Vanilla gradient saliency: ``|d score / d x|``, max over channels by default.

    Simonyan, Vedaldi & Zisserman (2013), *Deep Inside Convolutional Networks*,
    https://arxiv.org/abs/1312.6034

    Parameters are those of :class:`~saliencekit.attributions.WhiteBoxExplainer`.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import Saliency
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> maps = Saliency(model).explain(np.ones((2, 4), "float32"), [0, 2])
    >>> tuple(maps.shape)
    (2, 4)
    """

    _token_inputs = True

    def _batch(self, inputs, targets, seeds):
        return tf.nest.map_structure(self._magnitude, self._gradients(inputs, targets))


class _SampledGradients(WhiteBoxExplainer):
    """Gradients at ``nb_samples`` points derived from each input, summarised online.

    A subclass says which points (:meth:`_points`) and what to make of their gradients'
    mean and sum of squared deviations (:meth:`_statistic`). Statistics are accumulated over
    chunks of samples (Chan et al.'s parallel update), one chunk in flight at a time, so
    memory is bounded by ``batch_size`` whatever ``nb_samples`` is: each forward pass holds
    ``batch_size`` points (several samples of one input when there are fewer inputs than
    ``batch_size``).
    """

    #: whether the statistic needs the running sum of squared deviations
    _needs_m2 = False
    _token_inputs = True
    nb_samples: int

    def _points(self, inputs: tf.Tensor, seeds: tf.Tensor, sample: tf.Tensor,
                leaf: int = 0) -> tf.Tensor:
        """The points ``(copies, B, ...)`` of samples ``sample`` (``(copies,)`` int64) for
        one input (``leaf``: its index among a multi-input model's inputs)."""
        raise NotImplementedError

    def _per_sample(self, gradients: tf.Tensor) -> tf.Tensor:
        return gradients

    def _statistic(self, inputs, mean: tf.Tensor, m2: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def _batch(self, inputs, targets, seeds):
        # The batch axis may be dynamic (the kernel is traced with reduce_retracing).
        # Inputs may be a structure (a multi-input model): every leaf is sampled (each
        # from its own noise stream), and summarised, alike.
        batch = batch_ops.batch_size(inputs)
        copies = tf.clip_by_value(self._per_pass // batch, 1, self.nb_samples)  # per pass
        chunks = (self.nb_samples + copies - 1) // copies
        t = batch_ops.tile(targets, copies)  # (copies * B, ...), sample-major
        leaves = tf.nest.flatten(inputs)

        def chunk_stats(index):
            sample = index * copies + tf.range(copies, dtype=tf.int64)  # (copies,)
            weight = tf.cast(sample < self.nb_samples, tf.float32)
            points = [tf.reshape(self._points(x, seeds, sample, leaf), (-1, *x.shape[1:]))
                      for leaf, x in enumerate(leaves)]
            gradients = self._gradients(tf.nest.pack_sequence_as(inputs, points), t)
            n = tf.reduce_sum(weight)
            means, m2s = [], []
            for x, values in zip(leaves, tf.nest.flatten(gradients)):
                values = tf.reshape(self._per_sample(values), (copies, batch, *x.shape[1:]))
                w = tf.reshape(weight, [-1] + [1] * x.shape.rank)
                mean = tf.ensure_shape(tf.reduce_sum(values * w, 0) / n, x.shape)
                means.append(mean)
                if self._needs_m2:
                    m2s.append(tf.ensure_shape(
                        tf.reduce_sum(w * tf.square(values - mean), 0), x.shape))
            return n, means, m2s

        # Chan et al.'s parallel update, starting from an empty summary; one loop, so the
        # model appears once in the graph.
        count = tf.constant(0.0)
        mean = [tf.zeros_like(x) for x in leaves]
        # no running sum of squares where the statistic does not read it
        m2 = [tf.zeros_like(x) if self._needs_m2 else tf.zeros(()) for x in leaves]
        for index in tf.range(chunks, dtype=tf.int64):
            # one chunk in flight: while_loop's default (10 parallel iterations) would hold
            # up to 10 chunks' activations at once, breaking the batch_size memory bound
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)
            n, chunk_mean, chunk_m2 = chunk_stats(index)
            total = count + n
            delta = [c - m for c, m in zip(chunk_mean, mean)]
            mean = [m + d * (n / total) for m, d in zip(mean, delta)]
            if self._needs_m2:
                m2 = [a + c + tf.square(d) * (count * n / total)
                      for a, c, d in zip(m2, chunk_m2, delta)]
            count = total
        return tf.nest.pack_sequence_as(inputs, [
            self._statistic(x, a, b) for x, a, b in zip(leaves, mean, m2)])


class _NoisyGradients(_SampledGradients):
    """Gradients at ``nb_samples`` noisy copies of each input.

    The noise is Gaussian with standard deviation ``noise * (max(x) - min(x))`` per input
    (the paper's noise level, so it does not depend on the input's scale). It is drawn
    inside the compiled kernel, from Philox streams keyed by ``(seed, input index, sample
    index)`` (:mod:`saliencekit.commons.random`): a ``seed`` repeats a run exactly,
    whatever the batch size or the order of batches (XLA draws other numbers from a seed).
    """

    _stochastic = True

    def __init__(
        self,
        model: keras.Model,
        output_layer: str | int | None = None,
        batch_size: int | None = 64,
        operator: Any = None,
        reducer: str | None = "max",
        nb_samples: int = 50,
        noise: float = 0.2,
        *,
        seed: int | None = None,
        input_layer: str | int | None = None,
        pad_id: int | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.nb_samples = validation.positive_int("nb_samples", nb_samples)
        self.noise = validation.non_negative_float("noise", noise)
        self.seed = validation.optional_seed("seed", seed)
        super().__init__(
            model,
            output_layer=output_layer,
            batch_size=batch_size,
            operator=operator,
            reducer=reducer,
            input_layer=input_layer,
            pad_id=pad_id,
            jit_compile=jit_compile,
            strategy=strategy,
        )

    def _points(self, inputs, seeds, sample, leaf=0):
        return tf.map_fn(  # one vectorised draw per sample of the chunk
            lambda j: random.noisy(inputs, self.noise, seeds, j, stream=leaf),
            sample,
            fn_output_signature=tf.TensorSpec((None, *inputs.shape[1:]), tf.float32),
        )


class SmoothGrad(_NoisyGradients):
    """SmoothGrad: ``|mean of the gradients at noisy copies of x|``.

    Smilkov et al. (2017), *SmoothGrad: removing noise by adding noise*,
    https://arxiv.org/abs/1706.03825

    Parameters
    ----------
    model, output_layer, batch_size, operator, reducer, jit_compile, strategy
        As in :class:`~saliencekit.attributions.WhiteBoxExplainer`.
    nb_samples : int, default 50
        Noisy copies per input.
    noise : float, default 0.2
        Noise standard deviation as a fraction of each input's range ``max(x) - min(x)``.
    seed : int or None, default None
        Makes runs repeat; ``None`` draws fresh noise at every call.

    With ``noise=0`` it equals :class:`Saliency`. The absolute value is taken after
    averaging (as in tf-keras-vis), so gradients of unstable sign cancel out.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import SmoothGrad
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
    ...                           keras.layers.GlobalAveragePooling2D()])
    >>> maps = SmoothGrad(model, nb_samples=4, seed=0)(np.ones((2, 8, 8, 3)), [0, 1])
    >>> tuple(maps.shape)
    (2, 8, 8, 1)
    """

    def _statistic(self, inputs, mean, m2):
        return self._magnitude(mean)


class SquareGrad(_NoisyGradients):
    """SquareGrad: the mean of the squared gradients at noisy copies of x.

    Hooker et al. (2019), *A Benchmark for Interpretability Methods in Deep Neural
    Networks*, https://arxiv.org/abs/1806.10758 (SmoothGrad-SQ).

    Parameters as in :class:`SmoothGrad`.
    """

    def _per_sample(self, gradients):
        return tf.square(gradients)

    def _statistic(self, inputs, mean, m2):
        return mean


class VarGrad(_NoisyGradients):
    """VarGrad: the variance of the gradients at noisy copies of x.

    Adebayo et al. (2018), *Local Explanation Methods for Deep Neural Networks Lack
    Sensitivity to Parameter Values*, https://arxiv.org/abs/1810.03307

    Parameters as in :class:`SmoothGrad`. The population variance (divided by
    ``nb_samples``) is returned; one sample gives zeros.
    """

    _needs_m2 = True

    def _statistic(self, inputs, mean, m2):
        return m2 / self.nb_samples


class GradientInput(WhiteBoxExplainer):
    """Gradient times input: ``x * d score / d x``, summed over channels by default.

    Shrikumar et al. (2016), *Not Just a Black Box: Learning Important Features Through
    Propagating Activation Differences*, https://arxiv.org/abs/1605.01713

    Parameters are those of :class:`~saliencekit.attributions.WhiteBoxExplainer`, with
    ``reducer="sum"`` by default: signed attributions are summed over channels, so a map's
    total stays the total attribution. For a linear model ``w . x`` the map is ``w * x``.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import GradientInput
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
    >>> model.layers[0].set_weights([np.array([[1.0], [-2.0], [3.0]], "float32")])
    >>> GradientInput(model, operator="regression")(np.array([[1.0, 1.0, 2.0]])).numpy()
    array([[ 1., -2.,  6.]], dtype=float32)
    """

    def __init__(
        self,
        model: keras.Model,
        output_layer: str | int | None = None,
        batch_size: int | None = 64,
        operator: Any = None,
        reducer: str | None = "sum",
        *,
        input_layer: str | int | None = None,
        pad_id: int | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        super().__init__(
            model,
            output_layer=output_layer,
            batch_size=batch_size,
            operator=operator,
            reducer=reducer,
            input_layer=input_layer,
            pad_id=pad_id,
            jit_compile=jit_compile,
            strategy=strategy,
        )

    _token_inputs = True
    _times_input = True

    def _batch(self, inputs, targets, seeds):
        return tf.nest.map_structure(tf.multiply, inputs, self._gradients(inputs, targets))


class IntegratedGradients(_SampledGradients):
    """Integrated Gradients: ``(x - x0) * mean of the gradients along the path x0 -> x``.

    Sundararajan, Taly & Yan (2017), *Axiomatic Attribution for Deep Networks*,
    https://arxiv.org/abs/1703.01365

    Parameters
    ----------
    model, output_layer, batch_size, operator, jit_compile, strategy
        As in :class:`~saliencekit.attributions.WhiteBoxExplainer`.
    steps : int, default 50
        Points on the straight path, at the midpoints ``(k + 0.5) / steps`` (a Riemann
        sum whose error shrinks as ``1 / steps**2`` for smooth models).
    baseline_value : float, array or callable, default 0.0
        ``x0``: a constant, an array broadcasting to one input's shape, or a function
        ``inputs -> baselines`` of TensorFlow ops (called inside the kernel).
    reducer : default "sum"
        Signed attributions are summed over channels, so that a map adds up to
        ``score(x) - score(x0)`` (completeness).
    baseline_token : int or None, default None
        Token inputs (see ``input_layer``): the path starts at the embedding of a sequence
        of this token (e.g. the pad or ``[MASK]`` id) instead of ``baseline_value``.

    The path's points are gradient batches like SmoothGrad's noisy copies: memory is
    bounded by ``batch_size`` whatever ``steps`` is.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import IntegratedGradients
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
    ...                           keras.layers.Dense(1)])
    >>> x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    >>> maps = IntegratedGradients(model, steps=64, operator="regression")(x).numpy()
    >>> gap = model(x).numpy()[:, 0] - model(np.zeros_like(x)).numpy()[:, 0]
    >>> bool(np.allclose(maps.sum(axis=1), gap, atol=1e-3))
    True
    """

    def __init__(
        self,
        model: keras.Model,
        output_layer: str | int | None = None,
        batch_size: int | None = 64,
        operator: Any = None,
        reducer: str | None = "sum",
        steps: int = 50,
        baseline_value: Any = 0.0,
        *,
        baseline_token: int | None = None,
        input_layer: str | int | None = None,
        pad_id: int | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.steps = self.nb_samples = validation.positive_int("steps", steps)
        self.baseline_value = baseline_value
        self._baseline_fn = _baseline_function(baseline_value)
        super().__init__(
            model,
            output_layer=output_layer,
            batch_size=batch_size,
            operator=operator,
            reducer=reducer,
            input_layer=input_layer,
            pad_id=pad_id,
            jit_compile=jit_compile,
            strategy=strategy,
        )
        if baseline_token is not None and (
                self._tokens is None or isinstance(baseline_token, bool) or
                not isinstance(baseline_token, int)):
            raise validation.value_error(
                "baseline_token", "None, or an int token id for a model explained at an "
                "embedding (input_layer)", repr(baseline_token))
        self.baseline_token = baseline_token

    _times_input = True

    def _baseline(self, inputs):
        """``x0``; for token inputs with ``baseline_token``, the embedding of a sequence of
        that token (the ids of the batch being explained give its length)."""
        if self.baseline_token is None or self._tokens is None:
            return self._baseline_fn(inputs)
        given = self._token_ids()  # a multi-input model's other inputs: as they are
        ids = self._tokens.ids(given)
        return self._embed(self._tokens.with_ids(given, tf.fill(
            tf.shape(ids), tf.cast(self.baseline_token, ids.dtype))))

    def _points(self, inputs, seeds, sample, leaf=0):
        baseline = self._baseline(inputs)
        alpha = (tf.cast(sample, tf.float32) + 0.5) / self.steps
        alpha = tf.reshape(alpha, [-1] + [1] * inputs.shape.rank)
        return baseline[None] + alpha * (inputs - baseline)[None]

    def _statistic(self, inputs, mean, m2):
        return (inputs - self._baseline(inputs)) * mean


def _baseline_function(baseline):
    """``inputs -> baselines of the inputs' shape``, checked where it can be at once."""
    if callable(baseline):
        def from_callable(inputs):
            value = tf.convert_to_tensor(baseline(inputs), tf.float32)
            if value.shape.rank != inputs.shape.rank or not value.shape[1:].is_compatible_with(
                    inputs.shape[1:]):
                raise validation.value_error(
                    "baseline_value", f"a callable returning baselines of the inputs' shape "
                    f"{tuple(inputs.shape)}", f"shape {tuple(value.shape)}")
            return value
        return from_callable
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, np.ndarray,
                                                               tf.Tensor, list, tuple)):
        raise validation.type_error(
            "baseline_value", "a number, an array of one input's shape or a callable",
            type(baseline).__name__)
    constant = tf.constant(np.asarray(baseline, np.float32))
    validation.finite_array("baseline_value", constant.numpy())

    def from_constant(inputs):
        try:
            return tf.ensure_shape(tf.broadcast_to(constant, tf.shape(inputs)), inputs.shape)
        except (ValueError, tf.errors.InvalidArgumentError):
            raise validation.value_error(
                "baseline_value",
                f"an array broadcasting to one input's shape {tuple(inputs.shape[1:])}",
                f"shape {tuple(constant.shape)}") from None
    return from_constant
