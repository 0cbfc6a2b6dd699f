"""Counter-based Gaussian noise, keyed per input row and sample, vectorised.

Each noise value is a pure function of ``(seed, row, sample, element)``: an integer hash of
that counter (Wellons' *lowbias32*, applied in nested rounds) gives 32 random bits, and
Box-Muller turns pairs of 24-bit uniforms into normals. So:

- an input gets the same noise whatever batch it sits in and whatever the batch size;
- integer arithmetic is exact on every device, with or without XLA, so a seed repeats a
  run across backends (TensorFlow's ``stateless_normal`` differs under XLA);
- one vectorised op sequence draws the noise of a whole batch of noisy copies (no per-row
  loop), at a few elementwise passes over the batch.

Arithmetic is done in int64 with 16-bit halves so that no product overflows.
"""

from __future__ import annotations

import math

import tensorflow as tf

_MASK = 0xFFFFFFFF
_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _mul32(x: tf.Tensor, constant: int) -> tf.Tensor:
    """``(x * constant) mod 2**32`` for int64 ``x`` in [0, 2**32), without overflow."""
    low = tf.bitwise.bitwise_and(x, 0xFFFF) * constant  # < 2**48
    high = tf.bitwise.bitwise_and(tf.bitwise.right_shift(x, 16) * constant, 0xFFFF)
    return tf.bitwise.bitwise_and(low + tf.bitwise.left_shift(high, 16), _MASK)


def hash32(x: tf.Tensor) -> tf.Tensor:
    """Wellons' lowbias32 integer hash on int64 values in [0, 2**32)."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = _mul32(x, _M1)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))
    x = _mul32(x, _M2)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def _mix(key: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    value = hash32(tf.bitwise.bitwise_and(tf.bitwise.bitwise_and(value, _MASK) + _GOLDEN, _MASK))
    return hash32(tf.bitwise.bitwise_xor(key, value))


def gaussian(shape, seed: tf.Tensor, rows: tf.Tensor, samples: tf.Tensor) -> tf.Tensor:
    """Standard normal noise of shape ``(R, *shape)``: row ``i`` is keyed by
    ``(seed, rows[i], samples[i])`` (int64 tensors; ``rows`` and ``samples`` of shape
    ``(R,)``)."""
    size = math.prod(shape)
    key = _mix(hash32(tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), _MASK)), rows)
    key = _mix(key, tf.bitwise.right_shift(rows, 32))
    key = _mix(key, samples)[:, None]  # (R, 1)
    counter = tf.range(2 * size, dtype=tf.int64)[None]  # (1, 2 * size)
    bits = hash32(tf.bitwise.bitwise_xor(key, hash32(counter)))
    uniform = (tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) + 0.5) * (2.0**-24)
    radius = tf.sqrt(-2.0 * tf.math.log(uniform[:, :size]))
    normal = radius * tf.cos((2.0 * math.pi) * uniform[:, size:])
    return tf.reshape(normal, (-1, *shape))
