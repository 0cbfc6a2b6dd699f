"""Class activation maps: GradCAM, GradCAMPP (Grad-CAM++), LayerCAM."""

from __future__ import annotations

import warnings
from typing import Any

import keras
import tensorflow as tf

from ..commons import alignment as alignment_lib
from ..commons import batch_ops, postprocess, validation
from ..commons import model as inspect_model
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

    The alphas are not normalised: the authors' released code and tf-keras-vis also divide
    each channel's alphas by their spatial sum (a weighted mean of the positive gradients
    instead of a weighted sum), which is not in the paper's equations; maps differ.
    """
    spatial = list(range(1, gradients.shape.rank - 1))
    squared = tf.square(gradients)
    total = tf.reduce_sum(activations, axis=spatial, keepdims=True)
    alpha = tf.math.divide_no_nan(squared, 2.0 * squared + total * squared * gradients)
    return tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=spatial)


def find_conv_node(graph, model, conv_layer, argument: str = "conv_layer", *,
                   alignment: alignment_lib.Alignment | None = None, channels_first: bool = False,
                   map_input: int = 0):
    """The node of ``conv_layer``; with ``conv_layer=None``, of the last layer whose output
    is spatially aligned with an input (see :class:`~saliencekit.commons.alignment.Alignment`,
    computed on the model ``graph`` was flattened from) and is not the output itself.
    ``channels_first``: the layers' tensors are ``(N, C, *S)`` (the graph is a channels-last
    view of such a model). ``map_input``: the input (of a multi-input model) whose rank an
    explicit layer's output must have."""
    rank = len(graph.inputs[map_input].shape)
    expected = "a layer with a spatial output " + (
        "(N, H, W, C) or tokens (N, T, D)" if rank == 4 else "(N, T, C)" if rank == 3 else
        "tokens (N, T, D)" if rank == 2 else f"of rank {rank}")
    if conv_layer is None:
        if alignment is None:
            raise TypeError("find_conv_node: conv_layer=None needs the model's alignment")
        node, after = alignment_lib.last_aligned(graph, alignment, channels_first)
        if node is None:
            raise validation.value_error(
                "model", f"a model with {expected} aligned with the input (reached from it "
                "through convolutions, pooling, normalisation, activations, padding, "
                "resizing or merges), other than the explained output",
                "none", "Pass conv_layer= to choose one." if alignment.unknown else "")
        if after:
            warnings.warn(
                f"GradCAM's default layer is {node.path!r}: the layers {after} after it have "
                "an effect on positions that saliencekit does not know (Lambda and custom "
                "layers), so a later layer is not taken. If they keep positions, pass "
                "conv_layer= with a later layer.", UserWarning, stacklevel=3)
        return node
    node = inspect_model.find_node(graph, model, conv_layer, argument)
    tokens = len(node.output.shape) == 3 and rank in (2, 4)  # (N, T, D), a transformer's
    if not tokens and (len(node.output.shape) != rank or rank < 3):
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
        ``None`` for the default below.
    token_grid : (int, int) or None, default None
        The patch grid of a transformer layer's tokens, when it cannot be found (below).

    The default layer is the last one whose output is still spatially aligned with the
    input, other than the explained output: reached from the input only through
    convolutions, pooling, normalisation, activations, dropout, padding, cropping,
    resizing/upsampling, ``Rescaling``, ``Dense`` on the channels axis and merges (``Add``,
    ``Multiply``, ``Concatenate`` on channels...); a branch that carries no position (a
    squeeze-and-excitation gate after global pooling) may join. ``Permute`` (except one that
    keeps the spatial axes in order), ``Reshape``, ``Flatten``, attention and layers of
    unknown effect (``Lambda``, custom layers, which draw a warning naming them) end the
    alignment, as does reaching the output: the model's last layer with weights and the
    parameter-free steps after it (a segmentation head ``Conv2D(classes, 1,
    activation="softmax")``, whose CAM would be the prediction itself) are never the default.
    See :class:`~saliencekit.commons.alignment.Alignment`.

    Transformers: ``conv_layer`` may name a layer giving tokens ``(N, T, D)`` (a block's
    output). On an image, the tokens are put back on their patch grid ``(h, w)`` (the
    leading ``T - h * w`` class and register tokens dropped): the grid of the patch layer
    (the last 4-D tensor before the tokens, a strided ``Conv2D`` as ViTs write it), else
    the image's aspect ratio, or ``token_grid=(h, w)``. Token inputs (text) get one value
    per token ``(N, T)``. A model with a ``MultiHeadAttention`` over tokens has the input
    of its last attention as default layer (the last block's normalised tokens, where every
    token has a gradient even when the head reads only the class token); a model without
    one (any CNN) keeps the rule above.

    The map is ``relu(sum_c alpha_c A_c)`` at the layer's resolution, resized
    (bilinearly) to the input's, and not normalised (use
    :func:`saliencekit.commons.postprocess.normalize` to display it). The backward pass
    stops at the conv layer. After construction ``conv_layer`` holds the layer used (as in
    xplique) and ``conv_layer_name`` its path (``"backbone/out_relu"`` inside a nested
    model).

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

    _needs_graph = True

    def __init__(
        self,
        model: keras.Model,
        output_layer: str | int | None = None,
        batch_size: int | None = 64,
        operator: Any = None,
        conv_layer: str | int | None = None,
        *,
        token_grid: tuple[int, int] | None = None,
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
        if token_grid is not None:
            token_grid = validation.int_tuple("token_grid", token_grid, 2)
        graph = inspect_model.flatten(self._explained)
        multi_input = self._input_structure is not None
        alignment = (alignment_lib.Alignment(self._explained)
                     if conv_layer is None or multi_input else None)
        if isinstance(conv_layer, int) and output_layer is not None:
            # an index refers to the user's model.layers, not to the rerouted model's
            layers = self._model.layers
            layer = layers[conv_layer] if -len(layers) <= conv_layer < len(layers) else None
            conv_layer = layer.name if layer is not None else conv_layer
        try:
            explicit = None
            if multi_input and conv_layer is not None:  # which input it sees decides the rank
                explicit = inspect_model.find_node(
                    graph, self._model if output_layer is None else self._explained,
                    conv_layer, "conv_layer")
            node = None
            if conv_layer is None and not multi_input:  # a transformer: its last block
                node = alignment_lib.last_token_layer(graph)
            node = node or find_conv_node(
                graph, self._model if output_layer is None else self._explained, conv_layer,
                alignment=alignment, channels_first=self._channels_first,
                map_input=(alignment.input_of(graph, explicit) or 0) if explicit else 0)
        except ValueError:
            if output_layer is None or not isinstance(conv_layer, str):
                raise
            inspect_model.find_node(inspect_model.flatten(self._model), self._model, conv_layer,
                                    "conv_layer")  # raises if it is not in the model at all
            raise validation.value_error(
                "conv_layer", f"a layer between the input and output_layer={output_layer!r}",
                repr(conv_layer),
            ) from None
        self.conv_layer_name = node.path
        self.conv_layer = node.layer  # the layer used, as xplique holds it
        #: a multi-input model's input (index in ``tf.nest`` order) whose frame the map
        #: is in: the one the layer's positions are aligned with
        self._map_input = 0
        if multi_input:
            aligned = alignment.input_of(graph, node)
            if aligned is None:
                raise validation.value_error(
                    "conv_layer", "a layer aligned with one image input of the multi-input "
                    "model (reached from it through convolutions, pooling, ...)",
                    repr(node.path))
            self._map_input = aligned
        self._tapped = graph.model([node.output])
        # a transformer's tokens (N, T, D): on an image, the patch grid they come from
        self.token_grid = self._token_layout = None
        rank = len(graph.inputs[self._map_input].shape)
        if len(node.output.shape) == 3 and rank != 3:
            if rank == 4 and not self._channels_first:
                try:
                    h, w, extra = alignment_lib.token_grid(
                        graph, node, tuple(graph.inputs[self._map_input].shape[1:]),
                        token_grid)
                except ValueError as error:
                    raise validation.value_error(
                        "token_grid", "(h, w): the patch grid of the layer's tokens",
                        repr(token_grid), str(error)) from None
                self.token_grid = (h, w)
                self._token_layout = (h, w, extra)
            elif rank == 2:  # token inputs: one value per token (leading extra ones dropped)
                count, length = node.output.shape[1], graph.inputs[0].shape[1]
                extra = count - length if None not in (count, length) else 0
                self._token_layout = (None, None, max(extra, 0))
        if token_grid is not None and self.token_grid is None:
            raise validation.value_error(
                "token_grid", "None for a layer that is not a token sequence of an image",
                repr(token_grid))

    def _batch(self, inputs, targets, seeds):
        _, (activations,), (gradients,) = self._tapped_gradients(
            self._tapped, inputs, targets, wrt_inputs=False
        )
        return self._cam(self._channels_last(activations), self._channels_last(gradients))

    def _channels_last(self, tensor: tf.Tensor) -> tf.Tensor:
        """The layer's tensor as float32 ``(B, *s, C)`` (moved from ``(B, C, *s)`` in a
        channels_first model; a transformer's tokens on their patch grid)."""
        tensor = tf.cast(tensor, tf.float32)
        if self._token_layout is not None:  # (B, extra + h * w, D) -> (B, h, w, D)
            h, w, extra = self._token_layout
            if h is None:
                return tensor[:, extra:]
            return tf.reshape(tensor[:, extra:], (-1, h, w, tensor.shape[-1]))
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
    :func:`gradcampp_weights` (the closed form of the paper's higher-order terms, as
    pytorch-grad-cam). Unlike the authors' released code and tf-keras-vis, each channel's
    alphas are not divided by their spatial sum: that normalisation is not in the paper.

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
    ``relu(sum_k w_k A_k)``. This differs from the official code (and tf-keras-vis), which
    weights channel ``k`` by the class probability of the masked input (a softmax over
    classes, none over channels): the score here is whatever the operator explains (a
    regression output, a segmentation sum), which has no class softmax in general.

    No gradient is used: one forward pass per channel, ``batch_size``
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

    def _check_batches(self, batches):
        super()._check_batches(batches)
        if self._token_layout is not None and self._token_layout[0] is None:
            raise validation.value_error(
                "model", "a model of images, series or tables for ScoreCAM (it multiplies "
                "the input by each channel's map)", "a model of token ids",
                "GradCAM, GradCAMPP and LayerCAM give per-token maps.")

    def _batch(self, structure, targets, seeds):
        results = self._tapped(structure, training=False)
        # a multi-input model: the map's input is masked, the others are kept
        leaves = tf.nest.flatten(structure)
        inputs = leaves[self._map_input]
        activations = self._channels_last(results[-1])  # (B, *s, K)
        channels = activations.shape[-1]
        masks = _channel_masks(activations, tuple(inputs.shape[1:-1]))  # (B, *S, K)
        batch = tf.shape(inputs, out_type=tf.int64)[0]
        copies = tf.clip_by_value(self._per_pass // batch, 1, channels)  # channels per pass
        chunks = (channels + copies - 1) // copies
        t = batch_ops.tile(targets, copies)  # (copies * B, ...), channel-major
        others = [batch_ops.tile(x, copies) for x in leaves]
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
            masked = tf.nest.pack_sequence_as(structure, [
                masked if i == self._map_input else x for i, x in enumerate(others)])
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
