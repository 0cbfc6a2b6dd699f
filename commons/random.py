"""Gaussian noise keyed per input row and sample, at the speed of TensorFlow's Philox kernel.

Philox is a counter-based generator: the ``n``-th block of four numbers of the stream keyed
``k`` is a pure function of ``(k, n)``. TensorFlow's ``StatelessRandomNormalV2`` takes the
starting counter explicitly, so the noise of input row ``r`` for sample ``j`` is taken from
the stream keyed ``(seed, j)`` at counter ``r * blocks_per_row``: the same whatever batch the
row sits in, whatever the batch size and the order of batches, drawn for a whole batch of
rows by one kernel call. (TensorFlow's XLA kernels draw different numbers from the same
seed, so a seeded run repeats within one setting of ``jit_compile``.)
"""

from __future__ import annotations

import math

import tensorflow as tf

_PHILOX = 1  # tf.random.Algorithm.PHILOX


def gaussian(shape, seed: tf.Tensor, first_row: tf.Tensor, rows, sample: tf.Tensor,
             stream: int = 0):
    """Standard normal noise ``(rows, *shape)`` for input rows ``first_row, ...,
    first_row + rows - 1`` and sample ``sample`` of seed ``seed`` (int64 scalars).
    ``stream`` (the high word of Philox's counter) gives each input of a multi-input model
    numbers of its own; stream 0 is a single input's."""
    return _draw(tf.raw_ops.StatelessRandomNormalV2, shape, seed, first_row, rows, sample,
                 stream)


def uniform(shape, seed: tf.Tensor, first_row: tf.Tensor, rows, sample: tf.Tensor,
            stream: int = 0):
    """As :func:`gaussian`, uniform in ``[-1, 1)``: the same keying (4 numbers per counter
    step either way, so rows stay aligned), a quarter of the cost of normal draws."""
    return _draw(tf.raw_ops.StatelessRandomUniformV2, shape, seed, first_row, rows, sample,
                 stream) * 2.0 - 1.0


def _draw(kernel, shape, seed, first_row, rows, sample, stream):
    size = math.prod(shape)
    blocks = (size + 3) // 4  # Philox gives 4 numbers per counter step: rows stay aligned
    key = tf.bitwise.bitwise_or(
        tf.bitwise.left_shift(tf.cast(seed, tf.int64), 32),
        tf.bitwise.bitwise_and(tf.cast(sample, tf.int64), 0xFFFFFFFF),
    )
    counter = tf.stack([tf.cast(first_row, tf.int64) * blocks, tf.constant(stream, tf.int64)])
    draws = kernel(
        shape=tf.stack([tf.cast(rows, tf.int32), 4 * blocks]),
        key=tf.bitcast(key, tf.uint64)[None],
        counter=tf.bitcast(counter, tf.uint64),
        alg=_PHILOX,
        dtype=tf.float32,
    )
    return tf.reshape(draws[:, :size], (-1, *shape))


def noisy(inputs: tf.Tensor, noise: float, seeds: tf.Tensor, sample: tf.Tensor,
          stream: int = 0) -> tf.Tensor:
    """``inputs`` plus Gaussian noise of standard deviation ``noise * (max(x) - min(x))``
    per input (SmoothGrad's noise level), for sample ``sample``. ``seeds`` is the kernel's
    ``(B, 2)`` per-row ``(index, seed)``; rows are taken to be consecutive."""
    axes = list(range(1, inputs.shape.rank))
    sigma = noise * (
        tf.reduce_max(inputs, axes, keepdims=True) - tf.reduce_min(inputs, axes, keepdims=True)
    )
    rows = tf.shape(inputs, out_type=tf.int64)[0]
    draw = gaussian(inputs.shape[1:], seeds[0, 1], seeds[0, 0], rows, sample, stream)
    return inputs + sigma * draw
