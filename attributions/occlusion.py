"""Occlusion sensitivity."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ..commons import batch_ops, validation
from ..commons import model as inspect_model
from .base import BlackBoxExplainer


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch positions along one axis. The last patch is moved to the edge, so with
    ``stride <= patch`` every position is covered."""
    if patch >= size:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


class Occlusion(BlackBoxExplainer):
    """Occlusion sensitivity: how much the score drops when a patch is hidden.

    Zeiler & Fergus (2014), *Visualizing and Understanding Convolutional Networks*,
    https://arxiv.org/abs/1311.2901

    Parameters
    ----------
    model, batch_size, operator, jit_compile, strategy
        As in :class:`~saliencekit.attributions.BlackBoxExplainer`.
    patch_size : int, tuple of int, or a list/dict of them, default 8
        Patch extent along each spatial axis (height, width for images; time steps for
        ``(N, T, C)`` series; features for ``(N, D)`` tables). A patch larger than the
        input is refused. A multi-input model's inputs are occluded one at a time, each
        getting its own map: a list (or a dict by input name) gives one size per input
        (``patch_stride`` likewise); an int or a tuple applies to every input.
    patch_stride : int, tuple of int or None, default None (= patch_size)
        Step between patches. The last patch along an axis is moved to the edge, so with
        ``patch_stride <= patch_size`` every position is covered; positions in the gaps
        left by a larger stride get 0.
    occlusion_value : float, default 0.0
        The value written into the patch (all channels).

    Each position's value is the mean score drop over the patches covering it (so
    overlapping patches do not inflate it). Maps are ``(N, H, W, 1)`` for images,
    ``(N, T, 1)`` for series and ``(N, D)`` for tables. Each forward pass holds
    ``batch_size`` occluded inputs (several patches of one input when there are fewer
    inputs than ``batch_size``).

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import Occlusion
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
    ...                           keras.layers.GlobalAveragePooling2D()])
    >>> maps = Occlusion(model, patch_size=4, patch_stride=2)(np.ones((2, 8, 8, 3)), [0, 1])
    >>> tuple(maps.shape)
    (2, 8, 8, 1)
    """

    _perturbed_by = "occlusion_value"

    def __init__(
        self,
        model: keras.Model,
        batch_size: int | None = 64,
        operator: Any = None,
        patch_size: int | tuple[int, ...] = 8,
        patch_stride: int | tuple[int, ...] | None = None,
        occlusion_value: float = 0.0,
        *,
        jit_compile: bool = False,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.patch_size = _check_patch("patch_size", patch_size)
        self.patch_stride = None if patch_stride is None else _check_patch(
            "patch_stride", patch_stride)
        if isinstance(occlusion_value, bool) or not isinstance(occlusion_value, (int, float)):
            raise validation.type_error("occlusion_value", "a number", repr(occlusion_value))
        self.occlusion_value = float(occlusion_value)
        super().__init__(model, batch_size=batch_size, operator=operator, jit_compile=jit_compile,
                         strategy=strategy)
        shape = inspect_model.sample_input_shape(self._explained)
        if shape is not None and self._input_structure is None:  # one size per axis, as
            axes = max(len(shape) - 1, 1)  # xplique stores (3, 3) for images
            self.patch_size = _per_axis(self.patch_size, axes)
            self.patch_stride = _per_axis(self.patch_stride, axes)

    def _check_batches(self, batches):
        for leaf, shape in enumerate(batches.sample_shapes):
            self._patches(shape, leaf, batches.structured)

    def _for_input(self, value, leaf: int, structured: bool):
        """``patch_size``/``patch_stride`` for one input: a list (or a dict by input name)
        gives one per input of a multi-input model; an int or a tuple applies to all."""
        if isinstance(value, dict):
            names = sorted(self._input_structure) if isinstance(
                self._input_structure, dict) else None
            return value[names[leaf]] if names and names[leaf] in value else None
        if isinstance(value, list):
            return value[leaf] if structured and leaf < len(value) else None
        return value

    def _patches(self, sample_shape: tuple, leaf: int = 0, structured: bool = False):
        """Spatial sizes, patch and stride per axis; a patch larger than the input along an
        axis would hide all of it at once (a constant map): refused."""
        spatial = tuple(sample_shape[:-1]) if len(sample_shape) >= 2 else tuple(sample_shape)
        size = self._for_input(self.patch_size, leaf, structured)
        if size is None:
            raise validation.value_error(
                "patch_size", "one patch size per model input (a list, or a dict by input "
                "name) for a multi-input model, or one for all", repr(self.patch_size))
        stride = self._for_input(self.patch_stride, leaf, structured)
        patch = validation.int_tuple("patch_size", size, len(spatial))
        stride = patch if stride is None else validation.int_tuple(
            "patch_stride", stride, len(spatial))
        if any(p > s for p, s in zip(patch, spatial)):
            where = f" (input {leaf})" if structured else ""
            raise validation.value_error(
                "patch_size", f"at most the inputs' size {spatial}{where} along each axis (a "
                "patch covering a whole axis hides everything at once: a constant map)",
                self.patch_size, "A multi-input model takes a list of patch sizes, one per "
                "input." if structured else None)
        return spatial, patch, stride

    def _geometry(self, inputs, leaf: int = 0, structured: bool = False):
        """Static patch layout: spatial sizes, starts ``(P, S)``, coverage counts."""
        spatial, patch, stride = self._patches(tuple(inputs.shape[1:]), leaf, structured)
        per_axis = [patch_starts(s, p, st) for s, p, st in zip(spatial, patch, stride)]
        starts = np.array(np.meshgrid(*per_axis, indexing="ij")).reshape(len(spatial), -1).T
        coverage = np.zeros(spatial, np.float32)
        for start in starts:
            coverage[tuple(slice(a, a + p) for a, p in zip(start, patch))] += 1
        return spatial, patch, starts, coverage

    def _batch(self, inputs, targets, seeds):
        # A multi-input model's inputs are occluded one at a time (the others unchanged):
        # each gets its own map.
        base = self._score(inputs, targets)  # (B,)
        leaves = tf.nest.flatten(inputs)
        structured = not tf.is_tensor(inputs)
        return tf.nest.pack_sequence_as(inputs, [
            self._occlusion_map(inputs, leaf, targets, base, structured)
            for leaf in range(len(leaves))])

    def _occlusion_map(self, structure, leaf: int, targets, base, structured: bool):
        leaves = tf.nest.flatten(structure)
        inputs = leaves[leaf]
        # The batch axis may be dynamic (the kernel is traced with reduce_retracing).
        batch = tf.shape(inputs)[0]
        spatial, patch, starts, coverage = self._geometry(inputs, leaf, structured)
        has_channels = inputs.shape.rank >= 3
        copies = tf.clip_by_value(self._per_pass // batch, 1, len(starts))  # patches per pass
        chunks = (len(starts) + copies - 1) // copies
        padded = tf.pad(  # empty patches (far outside) fill the last chunk
            tf.constant(starts, tf.int64), [[0, chunks * copies - len(starts)], [0, 0]],
            constant_values=-(10**9),
        )
        padded = tf.reshape(padded, (chunks, copies, len(spatial)))

        tiled_targets = batch_ops.tile(targets, copies)
        others = [None if i == leaf else batch_ops.tile(x, copies) for i, x in enumerate(leaves)]
        total = tf.zeros_like(inputs[..., 0] if has_channels else inputs)  # (B, *spatial)
        for chunk in tf.range(chunks):
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)  # memory bound
            chunk_starts = padded[chunk]  # (copies, S)
            masks = None
            for axis, (size, extent) in enumerate(zip(spatial, patch)):
                index = tf.range(size, dtype=tf.int64)[None]
                start = chunk_starts[:, axis:axis + 1]
                inside = tf.cast((index >= start) & (index < start + extent), tf.float32)
                shape = [-1] + [1] * len(spatial)
                shape[axis + 1] = size
                inside = tf.reshape(inside, shape)
                masks = inside if masks is None else masks * inside  # (copies, *spatial)
            mask = masks[:, None, ..., None] if has_channels else masks[:, None]
            occluded = inputs[None] * (1.0 - mask) + self.occlusion_value * mask
            occluded = tf.reshape(occluded, (-1, *inputs.shape[1:]))
            occluded = tf.nest.pack_sequence_as(
                structure, [occluded if i == leaf else x for i, x in enumerate(others)])
            scores = tf.reshape(self._score(occluded, tiled_targets), (copies, batch))
            drops = base[None] - scores  # (copies, B)
            spread = tf.tensordot(drops, masks, axes=[[0], [0]])  # (B, *spatial)
            total = total + tf.ensure_shape(spread, total.shape)
        return tf.math.divide_no_nan(total, tf.constant(coverage))


def _per_axis(value, axes: int):
    return (value,) * axes if isinstance(value, int) else value


def _check_patch(argument: str, value):
    if isinstance(value, list):  # one per input of a multi-input model
        return [_check_patch(argument, v) for v in value]
    if isinstance(value, dict):
        return {k: _check_patch(argument, v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(validation.positive_int(argument, v) for v in value)
    return validation.positive_int(argument, value)
