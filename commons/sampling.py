"""Random masks and designs of the black-box methods, keyed by ``(seed, input, sample)``.

Every random number here is a pure function of ``(seed, stream, input index, sample index,
element)``: a counter-based integer hash (Wellons' ``lowbias32``, applied in a chain)
evaluated by vectorised TensorFlow integer ops. A sample's mask therefore does not depend
on which batch, which chunk of samples or which replica it is drawn in, so a ``seed``
repeats a run for any ``batch_size``, and, integer ops being exact, with or without XLA.

What the methods share:

- :func:`uniform`: keyed uniforms ``(samples, rows, *shape)`` in ``[0, 1)``.
- :func:`cell_map`: the grid cell of each position, the nearest-neighbour upsampling of a
  low-resolution grid used by Sobol, HSIC and Lime's default interpretable space.
- :func:`shifted_bilinear`: RISE's smooth masks, a low-resolution grid upsampled
  bilinearly to ``size * (1 + 1 / grid)`` and cropped at a random offset per mask.
- :func:`sobol_points`: any rows of TensorFlow's Sobol' sequence, digitally shifted per
  input (randomised quasi-Monte Carlo) or not, from integer ops (XLA compiles them).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_BITS = 24  # float32 uniforms with 24 random bits: exact multiples of 2**-24


def _hash(x: tf.Tensor) -> tf.Tensor:
    """Wellons' lowbias32 integer hash on uint32 (a bijection with good avalanche)."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(_M1, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(_M2, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def _u32(value) -> tf.Tensor:
    value = tf.convert_to_tensor(value)
    if value.dtype != tf.int64:
        value = tf.cast(value, tf.int64)
    return tf.cast(tf.bitwise.bitwise_and(value, 0xFFFFFFFF), tf.uint32)


def random_bits(seed, rows, samples, shape, stream: int = 0) -> tf.Tensor:
    """uint32 hashes ``(len(samples), len(rows), *shape)`` keyed by ``(seed, stream, row,
    sample, element)``. ``rows`` and ``samples`` are 1-D integer tensors; ``shape`` may hold
    scalar tensors."""
    shape = [tf.cast(s, tf.int32) for s in shape] if shape else []
    size = tf.reduce_prod(tf.stack(shape)) if shape else tf.constant(1, tf.int32)
    element = _u32(tf.range(size))[None, None]  # (1, 1, E)
    xor = tf.bitwise.bitwise_xor
    key = _hash(xor(_u32(seed), _hash(tf.constant(stream * 0x9E3779B9 % 2**32 + 1, tf.uint32))))
    row = _hash(xor(key, _hash(_u32(rows))))[None, :, None]  # (1, B, 1)
    sample = _hash(xor(_u32(samples), tf.constant(0x632BE5AB, tf.uint32)))[:, None, None]
    bits = _hash(xor(_hash(xor(row, sample)), element))  # (S, B, E)
    return tf.reshape(bits, tf.concat([tf.shape(samples)[:1], tf.shape(rows)[:1],
                                       tf.stack(shape) if shape else tf.zeros([0], tf.int32)],
                                      0))


def uniform(seed, rows, samples, shape, stream: int = 0) -> tf.Tensor:
    """Keyed uniforms in ``[0, 1)``, shape ``(len(samples), len(rows), *shape)``, float32."""
    bits = random_bits(seed, rows, samples, shape, stream)
    top = tf.bitwise.right_shift(bits, tf.constant(32 - _BITS, tf.uint32))
    return tf.cast(top, tf.float32) * (2.0 ** -_BITS)


def nearest_index(size: int, grid: int) -> np.ndarray:
    """For each of ``size`` positions, its cell among ``grid``: ``tf.image.resize``'s
    nearest-neighbour rule (half-pixel centres, ``floor((y + 0.5) * grid / size)``), in
    exact integer arithmetic."""
    return np.minimum((2 * np.arange(size) + 1) * grid // (2 * size), grid - 1)


def cell_map(size: tuple[int, ...], grid: tuple[int, ...]) -> np.ndarray:
    """The cell index (row-major in the grid) of every position of an input of spatial
    ``size``: nearest-neighbour upsampling of the grid, as xplique's Sobol and HSIC
    upsample their masks (``tf.image.resize(..., method="nearest")``). A numpy array."""
    per_axis = [nearest_index(s, g) for s, g in zip(size, grid)]
    if len(size) == 1:
        return per_axis[0].astype(np.int32)
    return (per_axis[0][:, None] * grid[1] + per_axis[1][None, :]).astype(np.int32)


def bilinear_weights(offsets: tf.Tensor, size: int, upsampled: int, grid: int) -> tf.Tensor:
    """``(n, size, grid)`` weights: row ``y`` of mask ``i`` is the bilinear interpolation
    (``tf.image.resize``'s, half-pixel centres) of a ``grid``-long axis upsampled to
    ``upsampled``, read at position ``y + offsets[i]``."""
    position = tf.cast(offsets[:, None] + tf.range(size, dtype=offsets.dtype)[None], tf.float32)
    source = (position + 0.5) * (grid / upsampled) - 0.5
    floor = tf.floor(source)
    lerp = source - floor
    lower = tf.cast(tf.maximum(floor, 0.0), tf.int32)
    upper = tf.cast(tf.minimum(tf.math.ceil(source), grid - 1.0), tf.int32)
    return (tf.one_hot(lower, grid) * (1.0 - lerp)[..., None]
            + tf.one_hot(upper, grid) * lerp[..., None])


def upsampled_size(size: int, grid: int) -> int:
    """RISE's upsampled extent ``size * (1 + 1 / grid)`` (xplique's rounding)."""
    return int(size * (1.0 + 1.0 / grid))


def shifted_bilinear(cells: tf.Tensor, offsets: list[tf.Tensor], size: tuple[int, ...]
                     ) -> tf.Tensor:
    """RISE masks: ``cells`` ``(n, g1[, g2], ...)`` upsampled bilinearly along its first one
    or two axes to ``size * (1 + 1 / g)`` and cropped at ``offsets`` (one ``(n,)`` integer
    tensor per upsampled axis). Returns ``(n, *size, ...)``."""
    grids = cells.shape[1:1 + len(size)]
    weights = [bilinear_weights(o, s, upsampled_size(s, g), g)
               for o, s, g in zip(offsets, size, grids)]
    if len(size) == 1:
        return tf.einsum("ntg,ng...->nt...", weights[0], cells)
    return tf.einsum("nyg,ngk,nxk->nyx", weights[0], cells, weights[1])


_DIRECTIONS: dict[int, np.ndarray] = {}


def _directions(dimension: int) -> np.ndarray:
    """``(24, dimension)`` direction numbers of TensorFlow's Sobol' sequence, as 24-bit
    integers: ``v_k`` is the point of index ``2**(k+1) - 1`` (whose Gray code is ``2**k``),
    read once from ``tf.math.sobol_sample`` (exact: ``v_k`` has ``k + 1`` bits)."""
    if dimension not in _DIRECTIONS:
        with tf.init_scope():  # eager, even while a kernel is traced
            rows = [tf.math.sobol_sample(dimension, 1, skip=2 ** (k + 1) - 2).numpy()[0]
                    for k in range(_BITS)]
        _DIRECTIONS[dimension] = (np.stack(rows).astype(np.float64) * 2**_BITS).astype(
            np.uint32)
    return _DIRECTIONS[dimension]


def sobol_bits(dimension: int, index: tf.Tensor) -> tf.Tensor:
    """Rows ``index`` (``(n,)``, 0-based) of TensorFlow's Sobol' sequence (which starts
    after the origin: row ``r`` is point ``r + 1``), as 24-bit integers ``(n, dimension)``
    uint32: the XOR of the direction numbers picked by the Gray code of ``r + 1``. Integer
    ops only, so XLA compiles it (``tf.math.sobol_sample`` has no XLA kernel), and any
    rows can be drawn, not only a consecutive run."""
    directions = tf.constant(_directions(dimension))
    point = tf.cast(tf.cast(index, tf.int64) + 1, tf.uint32)
    gray = tf.bitwise.bitwise_xor(point, tf.bitwise.right_shift(point, tf.constant(1, tf.uint32)))
    total = tf.zeros(tf.stack([tf.shape(index)[0], dimension]), tf.uint32)
    for k in range(_BITS):
        bit = tf.bitwise.bitwise_and(tf.bitwise.right_shift(gray, tf.constant(k, tf.uint32)),
                                     tf.constant(1, tf.uint32))
        total = tf.bitwise.bitwise_xor(total, directions[k][None] * bit[:, None])
    return total


def sobol_points(dimension: int, index: tf.Tensor, seed=None, rows=None,
                 stream: int = 7) -> tf.Tensor:
    """Sobol' points ``(n, B, dimension)`` in [0, 1) of rows ``index`` for input ``rows``.

    With a ``seed``, a random digital shift per input row and dimension (randomised QMC):
    each point is XOR-ed, bit by bit, with uniform 24 bits drawn from ``(seed, stream,
    row)``, which keeps a (t, m, s)-net a net and makes each point uniform on the cube, so
    estimates are unbiased and still low-discrepancy; the point is then the centre of its
    ``2**-24`` cell. Without (``seed=None``), the plain sequence, equal to
    ``tf.math.sobol_sample``'s, the same for every row (``B`` is then 1)."""
    bits = sobol_bits(dimension, index)[:, None]  # (n, 1, d)
    if seed is None:
        return tf.cast(bits, tf.float32) * (2.0 ** -_BITS)
    shift = random_bits(seed, rows, tf.zeros([1], tf.int64), [dimension], stream)[0]  # (B, d)
    shift = tf.bitwise.right_shift(shift, tf.constant(32 - _BITS, tf.uint32))
    shifted = tf.bitwise.bitwise_xor(bits, shift[None])
    return (tf.cast(shifted, tf.float32) + 0.5) * (2.0 ** -_BITS)


def cubic_weights(size: int, grid: int, a: float = -0.75) -> np.ndarray:
    """``(size, grid)`` weights of OpenCV's ``INTER_CUBIC`` resize along one axis (Keys'
    kernel with ``a = -0.75``, half-pixel centres, replicated borders), as xplique resizes
    its Sobol and HSIC indices with ``cv2.resize``."""
    source = (np.arange(size) + 0.5) * grid / size - 0.5
    floor = np.floor(source)
    t = source - floor
    weights = np.zeros((size, grid))
    for offset in (-1, 0, 1, 2):
        x = np.abs(t - offset)
        kernel = np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                          np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))
        column = np.clip(floor + offset, 0, grid - 1).astype(int)
        np.add.at(weights, (np.arange(size), column), kernel)
    return weights.astype(np.float32)


def resize_cubic(cells: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """``(B, g1, g2)`` -> ``(B, H, W)`` by :func:`cubic_weights` (a matrix product on each
    side: XLA compiles it, where it has no kernel for ``tf.image.resize``'s bicubic)."""
    rows = tf.constant(cubic_weights(size[0], cells.shape[1]))
    columns = tf.constant(cubic_weights(size[1], cells.shape[2]))
    return tf.einsum("yg,bgk,xk->byx", rows, cells, columns)
