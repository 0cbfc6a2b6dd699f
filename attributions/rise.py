"""RISE: randomized input sampling."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from ..commons import sampling, validation
from .sampled import SampledExplainer


class Rise(SampledExplainer):
    """RISE: the score-weighted average of random smooth masks.

    Petsiuk, Das & Saenko (2018), *RISE: Randomized Input Sampling for Explanation of
    Black-box Models*, https://arxiv.org/abs/1806.07421. With the ``"object detection"``
    operator it is D-RISE (Petsiuk et al. 2021, https://arxiv.org/abs/2006.03204).

    Parameters
    ----------
    model, batch_size, operator, jit_compile, strategy
        As in :class:`~saliencekit.attributions.BlackBoxExplainer`. ``batch_size`` counts
        masked copies per forward pass; ``None`` puts every mask of one input in one pass.
    nb_samples : int, default 4000
        Masks per input.
    grid_size : int or tuple, default 7
        Cells of the low-resolution masks: ``(g, g)`` (or the tuple) for images; ``g``
        steps along time for series ``(N, T, C)`` (xplique masks each channel on its own);
        ignored for tables ``(N, D)``, whose features are masked one by one. A position's
        channels share its mask.
    preservation_probability : float, default 0.5
        Probability that a cell is kept (the masks' mean).
    mask_value : float, default 0.0
        What a masked position is set to: ``x * m + (1 - m) * mask_value``.
    seed : int or None, default None
        Makes runs repeat; ``None`` draws fresh masks at every call.

    Each map is ``sum_s score_s * m_s / (sum_s m_s + 1e-4)`` (xplique's normalisation by
    the masks' empirical sum). A mask is a binary ``grid`` of cells kept with probability
    ``preservation_probability``, upsampled bilinearly to ``size * (1 + 1 / grid)`` and
    cropped at a random offset, drawn per mask (as in the paper; xplique crops every mask
    of a batch at one offset). Masks are drawn inside the compiled kernel from ``(seed,
    input index, mask index)``. Maps are ``(N, H, W, 1)`` for images, ``(N, T, 1)`` for
    series and ``(N, D)`` for tables.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import Rise
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
    ...                           keras.layers.GlobalAveragePooling2D()])
    >>> maps = Rise(model, nb_samples=64, grid_size=4, seed=0)(np.ones((2, 8, 8, 3)), [0, 1])
    >>> tuple(maps.shape)
    (2, 8, 8, 1)
    """

    _perturbed_by = "mask_value"

    EPSILON = 1e-4

    def __init__(
        self,
        model: keras.Model,
        batch_size: int | None = 32,
        operator: Any = None,
        nb_samples: int = 4000,
        grid_size: int | tuple[int, ...] = 7,
        preservation_probability: float = 0.5,
        mask_value: float = 0.0,
        *,
        seed: int | None = None,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.nb_samples = validation.positive_int("nb_samples", nb_samples)
        self.grid_size = _grid("grid_size", grid_size)
        probability = validation.non_negative_float(
            "preservation_probability", preservation_probability)
        if probability > 1:
            raise validation.value_error("preservation_probability", "a number in [0, 1]",
                                         probability)
        self.preservation_probability = probability
        self.mask_value = _number("mask_value", mask_value)
        self._set_seed(seed)
        super().__init__(model, batch_size=batch_size,
                         operator=operator, jit_compile=jit_compile, strategy=strategy)

    def _evaluations(self, inputs):
        return self.nb_samples

    def _cells(self, inputs) -> tuple[int, ...]:
        """The low-resolution mask's shape for one input."""
        rank = inputs.shape.rank
        if rank == 2:
            return (inputs.shape[1],)
        if rank == 3:
            grid = self.grid_size if isinstance(self.grid_size, int) else self.grid_size[0]
            return (min(grid, inputs.shape[1]),)
        if rank == 4:
            grid = validation.int_tuple("grid_size", self.grid_size, 2)
            return tuple(min(g, s) for g, s in zip(grid, inputs.shape[1:3]))
        raise validation.value_error(
            "inputs", "tables (N, D), series (N, T, C) or images (N, H, W, C) for Rise",
            f"shape {tuple(inputs.shape)}")

    def _setup(self, inputs, targets, seeds):
        # hoisted out of the sample loop: x * m + (1 - m) * v = v + m * (x - v), one
        # multiply-add per chunk (one multiply when v = 0) instead of four passes
        if self.mask_value == 0:
            return {"offset": inputs}
        return {"offset": inputs - self.mask_value}

    def _initial(self, inputs, context):
        shape = tf.shape(inputs)[:-1] if inputs.shape.rank >= 3 else tf.shape(inputs)
        return tf.zeros(shape), tf.zeros(shape)

    def _perturb(self, inputs, seeds, sample, context):
        rows, seed = seeds[:, 0], seeds[0, 1]
        cells_shape = self._cells(inputs)
        kept = sampling.uniform(seed, rows, sample, cells_shape, stream=0)
        cells = tf.cast(kept < self.preservation_probability, tf.float32)  # (copies, B, ...)
        copies_rows = tf.shape(cells)[:2]
        rank = inputs.shape.rank
        if rank == 2:
            masks = cells
        else:
            size = tuple(inputs.shape[1:3] if rank == 4 else inputs.shape[1:2])
            spans = [sampling.upsampled_size(s, g) - s + 1 for s, g in zip(size, cells_shape)]
            shifts = sampling.uniform(seed, rows, sample, [len(size)], stream=1)
            offsets = [tf.reshape(tf.cast(tf.floor(shifts[..., axis] * span), tf.int32), [-1])
                       for axis, span in enumerate(spans)]
            flat = tf.reshape(cells, (-1, *cells_shape))
            masks = sampling.shifted_bilinear(flat, offsets, size)
            masks = tf.reshape(masks, tf.concat([copies_rows, masks.shape[1:]], 0))
        expanded = masks[..., None] if rank >= 3 else masks
        perturbed = context["offset"][None] * expanded
        if self.mask_value != 0:
            perturbed += self.mask_value
        return perturbed, masks

    def _update(self, state, index, sample, valid, masks, scores, context):
        numerator, denominator = state
        weight = tf.cast(valid, tf.float32)
        shape = [-1, tf.shape(scores)[1]] + [1] * (masks.shape.rank - 2)
        weighted = tf.reshape(scores * weight[:, None], shape)
        kept = tf.reshape(tf.broadcast_to(weight[:, None], tf.shape(scores)), shape)
        return (numerator + tf.reduce_sum(weighted * masks, 0),
                denominator + tf.reduce_sum(kept * masks, 0))

    def _finish(self, inputs, seeds, state, context):
        numerator, denominator = state
        return numerator / (denominator + self.EPSILON)


def _grid(argument: str, value):
    if isinstance(value, (tuple, list)):
        return tuple(validation.positive_int(argument, v) for v in value)
    return validation.positive_int(argument, value)


def _number(argument: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise validation.type_error(argument, "a number", repr(value))
    return float(value)
