"""Class activation maps: GradCAM, GradCAMPP (Grad-CAM++), LayerCAM."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from ..commons import model as inspect_model
from ..commons import postprocess, validation
from .base import WhiteBoxExplainer


def gradcam_weights(gradients: tf.Tensor) -> tf.Tensor:
    """Grad-CAM's channel weights: the gradients averaged over space, ``(B, *s, C) -> (B, C)``."""
    return tf.reduce_mean(gradients, axis=list(range(1, gradients.shape.rank - 1)))


def weighted_activations(activations: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """``relu(sum_c weights[c] * activations[..., c])``, ``(B, *s, C), (B, C) -> (B, *s)``."""
    shape = [-1] + [1] * (activations.shape.rank - 2) + [weights.shape[-1]]
    return tf.nn.relu(tf.reduce_sum(activations * tf.reshape(weights, shape), axis=-1))


def gradcampp_weights(activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """Grad-CAM++'s channel weights ``(B, *s, C), (B, *s, C) -> (B, C)``:
    ``sum_ij alpha_ij relu(g_ij)`` with ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)``, the
    paper's closed form under an exponential of the score (as pytorch-grad-cam computes it).
    """
    spatial = list(range(1, gradients.shape.rank - 1))
    squared = tf.square(gradients)
    total = tf.reduce_sum(activations, axis=spatial, keepdims=True)
    alpha = tf.math.divide_no_nan(squared, 2.0 * squared + total * squared * gradients)
    return tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=spatial)


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
    model, output_layer, batch_size, operator, jit_compile, strategy
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
        strategy: tf.distribute.Strategy | None = None,
    ):
        super().__init__(
            model,
            output_layer=output_layer,
            batch_size=batch_size,
            operator=operator,
            reducer=None,
            jit_compile=jit_compile,
            strategy=strategy,
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
        return self._cam(self._channels_last(activations), self._channels_last(gradients))

    def _channels_last(self, tensor: tf.Tensor) -> tf.Tensor:
        """The layer's tensor as float32 ``(B, *s, C)`` (moved from ``(B, C, *s)`` in a
        channels_first model)."""
        tensor = tf.cast(tensor, tf.float32)
        if self._channels_first:
            tensor = tf.transpose(tensor, [0, *range(2, tensor.shape.rank), 1])
        return tensor

    def _cam(self, activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
        """``(B, *s, C)`` activations and gradients -> ``(B, *s)`` map."""
        return weighted_activations(activations, gradcam_weights(gradients))


class GradCAMPP(GradCAM):
    """Grad-CAM++: channel weights from positive gradients, weighted per position.

    Chattopadhyay et al. (2018), *Grad-CAM++: Improved Visual Explanations for Deep
    Convolutional Networks*, https://arxiv.org/abs/1710.11063

    Parameters and layer discovery as in :class:`GradCAM`. Weights are
    :func:`gradcampp_weights` (the closed form of the paper's higher-order terms).

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import GradCAMPP
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> tuple(GradCAMPP(model).explain(np.ones((1, 8, 8, 3)), [1]).shape)
    (1, 8, 8, 1)
    """

    def _cam(self, activations, gradients):
        return weighted_activations(activations, gradcampp_weights(activations, gradients))


class LayerCAM(GradCAM):
    """LayerCAM: activations weighted per position by their positive gradients.

    Jiang et al. (2021), *LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization*, IEEE TIP, https://doi.org/10.1109/TIP.2021.3089943 (no arXiv version);
    ``relu(sum_c relu(g_c) * A_c)``. It works on earlier, finer layers too: pass
    ``conv_layer=``.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import LayerCAM
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> tuple(LayerCAM(model).explain(np.ones((1, 8, 8, 3)), [1]).shape)
    (1, 8, 8, 1)
    """

    def _cam(self, activations, gradients):
        return tf.nn.relu(tf.reduce_sum(tf.nn.relu(gradients) * activations, axis=-1))


class ScoreCAM(GradCAM):
    """Score-CAM: activations weighted by the score of the input masked by each of them.

    Wang et al. (2020), *Score-CAM: Score-Weighted Visual Explanations for Convolutional
    Neural Networks*, https://arxiv.org/abs/1910.01279

    Parameters and layer discovery as in :class:`GradCAM`. Each channel ``k`` of the
    layer's activations is resized to the input's size and min-max normalised into a mask
    ``M_k``; its weight is the softmax over channels of ``score(x * M_k)`` (the explained
    output, so the logits when the model or ``output_layer`` gives them). The map is
    ``relu(sum_k w_k A_k)``. No gradient is used: one forward pass per channel, ``batch_size``
    masked inputs at a time, so memory is bounded by ``batch_size`` whatever the number of
    channels. It is exact but costs ``channels`` forward passes per input: choose a layer
    with few channels, or a small ``batch_size`` times many inputs.

    Examples
    --------
    >>> import numpy as np, keras
    >>> from saliencekit.attributions import ScoreCAM
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> tuple(ScoreCAM(model).explain(np.ones((1, 8, 8, 3)), [1]).shape)
    (1, 8, 8, 1)
    """

    def _batch(self, inputs, targets, seeds):
        results = self._tapped(inputs, training=False)
        activations = self._channels_last(results[-1])  # (B, *s, K)
        channels = activations.shape[-1]
        masks = _channel_masks(activations, tuple(inputs.shape[1:-1]))  # (B, *S, K)
        batch = tf.shape(inputs, out_type=tf.int64)[0]
        copies = tf.clip_by_value(self.batch_size // batch, 1, channels)  # channels per pass
        chunks = (channels + copies - 1) // copies
        t = None
        if targets is not None:  # (B, ...) -> (copies * B, ...), channel-major
            multiples = tf.concat([[copies], tf.ones([targets.shape.rank], tf.int64)], 0)
            t = tf.reshape(tf.tile(targets[None], multiples), (-1, *targets.shape[1:]))
        # channel-major masks, padded to whole chunks: (chunks * copies, B, *S)
        order = [masks.shape.rank - 1, *range(masks.shape.rank - 1)]
        masks = tf.transpose(masks, order)
        masks = tf.concat([masks, tf.zeros_like(masks[:1])], 0)  # index `channels`: padding
        scores = tf.TensorArray(tf.float32, size=tf.cast(chunks, tf.int32))
        for index in tf.range(chunks):
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)  # memory bound
            channel = tf.minimum(index * copies + tf.range(copies), channels)
            masked = inputs[None] * tf.gather(masks, channel)[..., None]  # (copies, B, *S, C)
            masked = tf.reshape(masked, (-1, *inputs.shape[1:]))
            scores = scores.write(tf.cast(index, tf.int32), tf.reshape(
                self._score(masked, t), (copies, batch)))
        scores = tf.reshape(scores.stack(), (-1, batch))[:channels]  # (K, B)
        weights = tf.ensure_shape(tf.nn.softmax(tf.transpose(scores), axis=-1), (None, channels))
        return weighted_activations(activations, weights)


def _channel_masks(activations: tf.Tensor, spatial: tuple) -> tf.Tensor:
    """Each channel resized to ``spatial`` and min-max normalised over positions (a
    constant channel gives a zero mask)."""
    resized = postprocess.resize_spatial(activations, spatial)
    axes = list(range(1, resized.shape.rank - 1))
    low = tf.reduce_min(resized, axis=axes, keepdims=True)
    high = tf.reduce_max(resized, axis=axes, keepdims=True)
    return tf.math.divide_no_nan(resized - low, high - low)
