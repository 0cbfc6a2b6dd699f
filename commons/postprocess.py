"""Post-processing of maps: channel reduction, resizing, normalisation filters.

All functions are pure TensorFlow so they can run inside a compiled kernel.
"""

from __future__ import annotations

import tensorflow as tf

from . import validation

#: name -> reduction over the channel axis (keeping it, size 1).
REDUCERS = {
    "max": tf.reduce_max,
    "min": tf.reduce_min,
    "mean": tf.reduce_mean,
    "sum": tf.reduce_sum,
}


def check_reducer(reducer: str | None) -> str | None:
    if reducer is None:
        return None
    if not isinstance(reducer, str) or reducer not in REDUCERS:
        raise validation.value_error(
            "reducer", f"None or one of {sorted(REDUCERS)}", repr(reducer)
        )
    return reducer


def reduce_channels(maps: tf.Tensor, reducer: str | None) -> tf.Tensor:
    """Reduce the last (channel) axis of image maps ``(N, H, W, C) -> (N, H, W, 1)``."""
    if reducer is None or maps.shape[-1] == 1:
        return maps
    return REDUCERS[reducer](maps, axis=-1, keepdims=True)


def resize_spatial(maps: tf.Tensor, spatial: tuple, method: str = "bilinear") -> tf.Tensor:
    """Resize ``(N, *s, C)`` maps to ``(N, *spatial, C)`` for 1 or 2 spatial axes."""
    if tuple(maps.shape[1:-1]) == tuple(spatial):
        return maps
    if len(spatial) == 2:
        return tf.image.resize(maps, spatial, method=method)
    if len(spatial) == 1:  # a 1-D map is a (length x 1) image
        resized = tf.image.resize(maps[:, :, None, :], (spatial[0], 1), method=method)
        return resized[:, :, 0, :]
    raise validation.value_error(
        "maps", "maps with 1 or 2 spatial axes to resize", f"shape {tuple(maps.shape)}"
    )


def _per_sample(maps: tf.Tensor, fn):
    axes = list(range(1, maps.shape.rank))
    return fn(maps, axis=axes, keepdims=True)


def normalize(maps: tf.Tensor) -> tf.Tensor:
    """Min-max normalise each map to [0, 1]; a constant map becomes zeros (not NaN)."""
    maps = tf.convert_to_tensor(maps, tf.float32)
    low = _per_sample(maps, tf.reduce_min)
    high = _per_sample(maps, tf.reduce_max)
    return tf.math.divide_no_nan(maps - low, high - low)


def absolute_normalize(maps: tf.Tensor) -> tf.Tensor:
    """``|maps|`` scaled so each map's maximum is 1."""
    maps = tf.abs(tf.convert_to_tensor(maps, tf.float32))
    return tf.math.divide_no_nan(maps, _per_sample(maps, tf.reduce_max))


def positive_normalize(maps: tf.Tensor) -> tf.Tensor:
    """The positive part of each map, scaled so its maximum is 1."""
    maps = tf.nn.relu(tf.convert_to_tensor(maps, tf.float32))
    return tf.math.divide_no_nan(maps, _per_sample(maps, tf.reduce_max))
