"""Saliency and the noisy-gradient family (SmoothGrad, SquareGrad, VarGrad)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from ..commons import random, validation
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

    def _batch(self, inputs, targets, seeds):
        return tf.abs(self._gradients(inputs, targets))


class _NoisyGradients(WhiteBoxExplainer):
    """Gradients at ``nb_samples`` noisy copies of each input, summarised online.

    The noise is Gaussian with standard deviation ``noise * (max(x) - min(x))`` per input
    (the paper's noise level, so it does not depend on the input's scale). It is drawn
    inside the compiled kernel, from Philox streams keyed by ``(seed, input index, sample
    index)`` (:mod:`saliencekit.commons.random`): a ``seed`` repeats a run exactly,
    whatever the batch size or the order of batches (XLA draws other numbers from a seed).
    Statistics are accumulated over chunks of samples (Chan et al.'s parallel
    update), so memory is bounded by ``batch_size`` whatever ``nb_samples`` is: each
    forward pass holds ``batch_size`` noisy inputs (several samples of one input when there
    are fewer inputs than ``batch_size``).
    """

    _stochastic = True
    #: whether the statistic needs the running sum of squared deviations
    _needs_m2 = False

    def __init__(
        self,
        model: keras.Model,
        nb_samples: int = 50,
        noise: float = 0.2,
        seed: int | None = None,
        *,
        output_layer: str | int | None = None,
        batch_size: int = 64,
        operator: Any = None,
        reducer: str | None = "max",
        jit_compile: bool = False,
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
            jit_compile=jit_compile,
        )

    def _per_sample(self, gradients: tf.Tensor) -> tf.Tensor:
        return gradients

    def _statistic(self, mean: tf.Tensor, m2: tf.Tensor, count: int) -> tf.Tensor:
        raise NotImplementedError

    def _batch(self, inputs, targets, seeds):
        # The batch axis may be dynamic (the kernel is traced with reduce_retracing).
        batch = tf.shape(inputs, out_type=tf.int64)[0]
        sample_shape = inputs.shape[1:]
        copies = tf.clip_by_value(self.batch_size // batch, 1, self.nb_samples)  # per pass
        chunks = (self.nb_samples + copies - 1) // copies

        def tile(tensor):  # (B, ...) -> (copies * B, ...), sample-major
            if tensor is None:
                return None
            multiples = tf.concat([[copies], tf.ones([tensor.shape.rank], tf.int64)], 0)
            return tf.reshape(tf.tile(tensor[None], multiples), (-1, *tensor.shape[1:]))

        axes = list(range(1, inputs.shape.rank))
        spread = tf.reduce_max(inputs, axes, keepdims=True) - tf.reduce_min(
            inputs, axes, keepdims=True
        )
        sigma = tile(self.noise * spread)
        x = tile(inputs)
        t = tile(targets)
        first_row, seed = seeds[0, 0], seeds[0, 1]
        weight_shape = [-1] + [1] * (len(sample_shape) + 1)

        def chunk_stats(index):
            sample = index * copies + tf.range(copies, dtype=tf.int64)  # (copies,)
            noise = tf.map_fn(  # one vectorised draw per sample of the chunk
                lambda j: random.gaussian(sample_shape, seed, first_row, batch, j),
                sample,
                fn_output_signature=tf.TensorSpec((None, *sample_shape), tf.float32),
            )
            noise = tf.reshape(noise, (-1, *sample_shape))
            values = self._per_sample(self._gradients(x + sigma * noise, t))
            values = tf.reshape(values, (copies, batch, *sample_shape))
            weight = tf.reshape(tf.cast(sample < self.nb_samples, tf.float32), weight_shape)
            n = tf.reduce_sum(weight)
            mean = tf.ensure_shape(tf.reduce_sum(values * weight, 0) / n, inputs.shape)
            m2 = None
            if self._needs_m2:
                m2 = tf.ensure_shape(
                    tf.reduce_sum(weight * tf.square(values - mean), 0), inputs.shape
                )
            return n, mean, m2

        # Chan et al.'s parallel update, starting from an empty summary; one loop, so the
        # model appears once in the graph.
        count = tf.constant(0.0)
        mean = tf.zeros_like(inputs)
        m2 = tf.zeros_like(inputs)
        for index in tf.range(chunks, dtype=tf.int64):
            # one chunk in flight: while_loop's default (10 parallel iterations) would hold
            # up to 10 chunks' activations at once, breaking the batch_size memory bound
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)
            n, chunk_mean, chunk_m2 = chunk_stats(index)
            total = count + n
            delta = chunk_mean - mean
            mean = mean + delta * (n / total)
            if self._needs_m2:
                m2 = m2 + chunk_m2 + tf.square(delta) * (count * n / total)
            count = total
        return self._statistic(mean, m2, self.nb_samples)


class SmoothGrad(_NoisyGradients):
    """SmoothGrad: ``|mean of the gradients at noisy copies of x|``.

    Smilkov et al. (2017), *SmoothGrad: removing noise by adding noise*,
    https://arxiv.org/abs/1706.03825

    Parameters
    ----------
    model, output_layer, batch_size, operator, reducer, jit_compile
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

    def _statistic(self, mean, m2, count):
        return tf.abs(mean)


class SquareGrad(_NoisyGradients):
    """SquareGrad: the mean of the squared gradients at noisy copies of x.

    Hooker et al. (2019), *A Benchmark for Interpretability Methods in Deep Neural
    Networks*, https://arxiv.org/abs/1806.10758 (SmoothGrad-SQ).

    Parameters as in :class:`SmoothGrad`.
    """

    def _per_sample(self, gradients):
        return tf.square(gradients)

    def _statistic(self, mean, m2, count):
        return mean


class VarGrad(_NoisyGradients):
    """VarGrad: the variance of the gradients at noisy copies of x.

    Adebayo et al. (2018), *Local Explanation Methods for Deep Neural Networks Lack
    Sensitivity to Parameter Values*, https://arxiv.org/abs/1810.03307

    Parameters as in :class:`SmoothGrad`. The population variance (divided by
    ``nb_samples``) is returned; one sample gives zeros.
    """

    _needs_m2 = True

    def _statistic(self, mean, m2, count):
        return m2 / count
