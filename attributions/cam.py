"""Class activation maps: GradCAM."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from ..commons import model as inspect_model
from ..commons import validation
from .base import WhiteBoxExplainer


def gradcam_weights(gradients: tf.Tensor) -> tf.Tensor:
    """Grad-CAM's channel weights: the gradients averaged over space, ``(B, *s, C) -> (B, C)``."""
    return tf.reduce_mean(gradients, axis=list(range(1, gradients.shape.rank - 1)))


def weighted_activations(activations: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """``relu(sum_c weights[c] * activations[..., c])``, ``(B, *s, C), (B, C) -> (B, *s)``."""
    shape = [-1] + [1] * (activations.shape.rank - 2) + [weights.shape[-1]]
    return tf.nn.relu(tf.reduce_sum(activations * tf.reshape(weights, shape), axis=-1))


def find_conv_node(graph, model, conv_layer, argument: str = "conv_layer"):
    """The node of ``conv_layer``, or of the last layer with a spatial output: an output
    of the input's rank (``(N, H, W, C)`` for images, ``(N, T, C)`` for series)."""
    rank = len(graph.inputs[0].shape)
    expected = "a layer with a spatial output " + (
        "(N, H, W, C)" if rank == 4 else "(N, T, C)" if rank == 3 else f"of rank {rank}")
    if conv_layer is None:
        spatial = [
            n for n in graph.nodes
            if len(n.output.shape) == rank >= 3 and not isinstance(n.layer, keras.Model)
        ]
        if not spatial:
            raise validation.value_error(
                "model", f"a model with {expected}", "none: no layer's output is spatial"
            )
        return spatial[-1]
    node = inspect_model.find_node(graph, model, conv_layer, argument)
    if len(node.output.shape) != rank or rank < 3:
        raise validation.value_error(
            argument, expected,
            f"layer {node.path!r} with output shape {tuple(node.output.shape)}",
        )
    return node


class GradCAM(WhiteBoxExplainer):
    """Grad-CAM: a conv layer's activations weighted by their spatially averaged gradients.

    Selvaraju et al. (2017), *Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization*, https://arxiv.org/abs/1610.02391

    Parameters
    ----------
    model, output_layer, batch_size, operator, jit_compile
        As in :class:`~saliencekit.attributions.WhiteBoxExplainer`.
    conv_layer : str, int or None, default None
        The layer whose activations are weighted: a name (searched in nested models too,
        e.g. inside a ``keras.applications`` backbone), an index into ``model.layers``, or
        ``None`` for the last layer with a spatial output.

    The map is ``relu(sum_c alpha_c A_c)`` at the layer's resolution, resized
    (bilinearly) to the input's, and not normalised (use
    :func:`saliencekit.commons.postprocess.normalize` to display it). The backward pass
    stops at the conv layer. ``conv_layer_name`` tells which layer was used.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import GradCAM
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> cam = GradCAM(model)
    >>> cam.conv_layer_name == model.layers[0].name
    True
    >>> tuple(cam.explain(np.ones((1, 8, 8, 3)), [1]).shape)
    (1, 8, 8, 1)
    """

    def __init__(
        self,
        model: keras.Model,
        conv_layer: str | int | None = None,
        *,
        output_layer: str | int | None = None,
        batch_size: int = 64,
        operator: Any = None,
        jit_compile: bool = False,
    ):
        super().__init__(
            model,
            output_layer=output_layer,
            batch_size=batch_size,
            operator=operator,
            reducer=None,
            jit_compile=jit_compile,
        )
        self.conv_layer = conv_layer
        graph = inspect_model.flatten(self._explained)
        if isinstance(conv_layer, int) and output_layer is not None:
            # an index refers to the user's model.layers, not to the rerouted model's
            layer = self.model.layers[conv_layer] if -len(self.model.layers) <= conv_layer < len(
                self.model.layers) else None
            conv_layer = layer.name if layer is not None else conv_layer
        try:
            node = find_conv_node(graph, self.model if output_layer is None else self._explained,
                                  conv_layer)
        except ValueError:
            if output_layer is None or not isinstance(conv_layer, str):
                raise
            inspect_model.find_node(inspect_model.flatten(self.model), self.model, conv_layer,
                                    "conv_layer")  # raises if it is not in the model at all
            raise validation.value_error(
                "conv_layer", f"a layer between the input and output_layer={output_layer!r}",
                repr(conv_layer),
            ) from None
        self.conv_layer_name = node.path
        self._tapped = graph.model([node.output])

    def _batch(self, inputs, targets, seeds):
        _, (activations,), (gradients,) = self._tapped_gradients(
            self._tapped, inputs, targets, wrt_inputs=False
        )
        activations = tf.cast(activations, tf.float32)
        gradients = tf.cast(gradients, tf.float32)
        return weighted_activations(activations, gradcam_weights(gradients))
