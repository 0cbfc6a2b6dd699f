"""Tensor operations that kernels share: copies of a batch, structures of inputs.

Inputs of a multi-input model are a structure (tuple, list or dict) of tensors; every
helper here takes a tensor or such a structure, so a single-input model is the one-leaf
case of the same code.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def tile(tensors: Any, copies) -> Any:
    """``(B, ...)`` -> ``(copies * B, ...)``, copy-major (rows ``i * B ... i * B + B - 1``
    are copy ``i``), for a tensor, a structure of tensors or ``None``. Works for axes whose
    size is only known when the kernel runs (targets of any ``K``)."""

    def one(tensor):
        if tensor is None:
            return None
        multiples = tf.concat([[copies], tf.ones([tensor.shape.rank], tf.int32)], 0)
        tiled = tf.tile(tensor[None], tf.cast(multiples, tf.int32))
        return tf.reshape(tiled, tf.concat([[-1], tf.shape(tensor)[1:]], 0))

    return tf.nest.map_structure(one, tensors)


def first(tensors: Any) -> tf.Tensor:
    """The first leaf of a structure of inputs (any leaf has the batch axis)."""
    return tf.nest.flatten(tensors)[0]


def batch_size(tensors: Any, dtype=tf.int64) -> tf.Tensor:
    """The batch axis's size (a scalar tensor: the axis may be unknown when tracing)."""
    return tf.shape(first(tensors), out_type=dtype)[0]
